"""A poison-proof ingest (issue 12): whatever a kiosk (or anyone with a certificate)
publishes, good scans are stored, bad messages are quarantined and acknowledged, the
worker stays alive; committed ids are confirmed to their kiosks; a retired kiosk is
refused from the moment of its retirement; a bug in the loop exits non-zero.

Real Mosquitto (TLS, client certificates) and real databases (SQLite and PostgreSQL
through `fleet_config`); confirmations are read by a plain MQTT client.
"""

import json
import signal
import sqlite3
import time
from argparse import Namespace

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

from fleet import ingest, kiosks as fleet_kiosks
from fleet.ingest import IngestWorker, _detail, row_problem
from fleet.models import Kiosk
from greengate import messages
from tests.ingestkit import (Confirmations, ingest_config, quarantined, scan, scan_ids, settle,
                             summary, wait_for)
from tests.test_ingest import kiosks, workers  # noqa: F401  (the ingest tests' fixtures)

NOW = time.time()


@pytest.fixture
def confirms(broker):
    reader = Confirmations(broker)
    yield reader
    reader.close()


@pytest.fixture
def config(fleet_config, broker):
    """The production window (400 days back, 24 h ahead): the good scans here are of now."""
    return ingest_config(fleet_config, broker, ingest={"max_age_days": 400.0})


def good(kiosk: str, scan_id, **changes) -> dict:
    """A valid scan of a minute ago, with `changes` put in as they are (no rounding)."""
    doc = scan(kiosk, scan_id, ts=NOW - 60)
    doc.update(changes)
    return doc


def raw(doc: dict) -> bytes:
    """JSON as Python writes it: NaN, surrogate escapes and NUL go through untouched."""
    return json.dumps(doc).encode()


def refuse_row(engine, scan_id: str) -> None:
    """Make the database itself refuse one scan row (a constraint the parsers know
    nothing of): the 'row that makes the insert fail'."""
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            c.execute(text(f"CREATE TRIGGER poison BEFORE INSERT ON scan WHEN NEW.scan_id = "
                           f"'{scan_id}' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"))
        else:
            c.execute(text(f"ALTER TABLE scan ADD CONSTRAINT ck_poison "
                           f"CHECK (scan_id <> '{scan_id}')"))


def quarantine_metric(worker, kind, reason) -> float:
    return worker.metrics.value("greengate_ingest_quarantined_total", kind=kind, reason=reason)


def stored(worker, kind="scan") -> float:
    return worker.metrics.value("greengate_ingest_stored_total", kind=kind)


# --- every poison kind in one stream ------------------------------------------------------
def poison(kiosk: str) -> list[tuple[str, str, bytes, str, str | None]]:
    """(kind, topic, payload, reason label, confirmed id or None) of each bad message."""
    topic, sums = messages.scan_topic(kiosk), messages.summary_topic(kiosk)
    nested = b'{"v":1,"a":' + b"[" * (messages.MAX_MESSAGE - 20)
    out = [
        ("scan", topic, nested, "too_deep", None),
        ("scan", topic, raw(good(kiosk, "nan-ts-0001", ts=float("nan"))), "not_finite", None),
        ("scan", topic, raw(good(kiosk, "inf-ts-0001", ts=float("inf"))), "not_finite", None),
        ("scan", topic, raw(good(kiosk, "big-ts-0001", ts=1e300)), "field_ts", None),
        ("scan", topic, raw(good(kiosk, "neg-ts-0001", ts=-1e300)), "field_ts", None),
        ("scan", topic, raw(good(kiosk, "str-ts-0001", ts="yesterday")), "field_ts", None),
        ("scan", topic, raw(good(kiosk, "int-dc-0001", decision=1)), "field_decision", None),
        ("scan", topic, raw(good(kiosk, ["a-list-as-id"])), "field_id", None),
        ("scan", topic, raw(good(kiosk, "big-seq-001", seq=10 ** 30)), "field_seq", None),
        ("scan", topic, raw(good(kiosk, "bool-seq-01", seq=True)), "field_seq", None),
        ("scan", topic, b'{"v":1,"id":"utf8-0001","kiosk":"' + kiosk.encode() +
         b'","reason":"\xff\xfe\xc3"}', "utf8", None),
        ("scan", topic, raw(good(kiosk, "surrogate01", holder="\ud800")), "field_holder", None),
        ("scan", topic, raw(good(kiosk, "surrogate02", reason="ok\udfff")), "field_reason", None),
        ("scan", topic, raw(good(kiosk, "nul-in-str1", reason="o\u0000k")), "field_reason",
         None),
        ("scan", topic, raw({**good(kiosk, "oversized01"), "pad": "x" * 5000}), "oversized",
         None),
        ("scan", topic, raw(good("someone-else", "wrongkiosk1")), "wrong_kiosk", None),
        ("scan", topic, b"", "not_json", None),
        ("scan", topic, b"[]", "not_object", None),
        ("summary", sums, raw({**summary(kiosk, "s" + "1" * 16), "count": 10 ** 30,
                               "first": NOW - 99, "last": NOW - 9}), "field_count", None),
        ("summary", sums, raw({**summary(kiosk, "s" + "2" * 16), "first": float("nan")}),
         "not_finite", None),
        # parsed, then outside the fleet's window: quarantined, and confirmed (the kiosk
        # must not keep sending what the fleet will never take)
        ("scan", topic, raw(good(kiosk, "future-0001", ts=NOW + 3 * 86400)), "ts_future",
         "future-0001"),
        ("scan", topic, raw(good(kiosk, "the-past-01", ts=NOW - 500 * 86400)), "ts_past",
         "the-past-01"),
        # parsed, and the database refuses its row: quarantined, confirmed
        ("scan", topic, raw(good(kiosk, "dbpoison-01")), "db_refused", "dbpoison-01"),
    ]
    return out


def test_a_poisoned_stream_stores_every_good_scan_and_quarantines_every_bad_one(
        config, fleet_db, workers, kiosks, confirms):
    refuse_row(fleet_db.kw["bind"], "dbpoison-01")
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    bad = poison("k1")
    good_ids = [f"good-{i:04d}" for i in range(3 * len(bad))]
    stream, goods = [], iter(good_ids)
    for kind, topic, payload, _, _ in bad:  # each bad one between good ones
        stream += [(messages.scan_topic("k1"), good("k1", next(goods))) for _ in range(3)]
        stream.append((topic, payload))
    # and a topic whose kiosk id is no kiosk id (no ACL on this test broker)
    stream.append(("gg/v1/kiosk/bad!kiosk/scan", good("k1", "bad-topic-01")))
    k1.publish_many(stream)

    n_bad = len(bad) + 1
    wait_for(lambda: stored(worker) == len(good_ids) and worker.stats["acked"] == len(stream),
             30, "every good scan stored, every message acknowledged")
    wait_for(lambda: len(quarantined(fleet_db)) == n_bad, 15, "every bad one quarantined")
    assert sorted(scan_ids(fleet_db)) == [("k1", i) for i in good_ids]
    rows = quarantined(fleet_db)
    by_reason = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append(row)
    for kind, topic, payload, reason, _ in bad:
        match = [r for r in by_reason.get(reason, []) if bytes(r["raw"]) == payload[:512]]
        assert len(match) == 1, (reason, payload[:80], [r["reason"] for r in rows])
        row = match[0]
        assert (row["kiosk_id"], row["topic"], row["kind"], row["size"]) == \
            ("k1", topic, kind, len(payload)), row
        assert row["detail"] and len(row["detail"]) <= 400 and row["detail"].isprintable()
        assert row["received"] >= NOW
    topic_row = by_reason["topic"][0]
    assert topic_row["kiosk_id"] is None and topic_row["topic"] == "gg/v1/kiosk/bad!kiosk/scan"
    assert "poisoned row" in by_reason["db_refused"][0]["detail"] or \
        "ck_poison" in by_reason["db_refused"][0]["detail"]
    # counted by kind and reason
    for kind, _, _, reason, _ in bad:
        want = sum(1 for b in bad if (b[0], b[3]) == (kind, reason))
        assert quarantine_metric(worker, kind, reason) == want, (kind, reason)
    assert quarantine_metric(worker, "unknown", "topic") == 1
    assert worker.metrics.value("greengate_ingest_batch_splits_total") >= 1

    # confirmed: every good id and those quarantined with a trustworthy id, nothing else
    expected = set(good_ids) | {b[4] for b in bad if b[4]}
    wait_for(lambda: set(confirms.ids("k1")) >= expected, 15, "the confirmations")
    settle(0.3)
    assert set(confirms.ids("k1")) == expected
    assert confirms.ids("someone-else") == [] and not confirms.unparsed
    assert all(len(doc["scans"]) + len(doc["summaries"]) <= messages.CONFIRM_IDS
               for _, doc in confirms.received)

    # alive, and everything was acknowledged: a restart under the same name gets nothing
    assert not worker.failed and worker._thread.is_alive()  # noqa: SLF001
    worker.stop()
    again = workers.start(config, presence=False)
    k1.publish(messages.scan_topic("k1"), good("k1", "after-restart"))
    wait_for(lambda: stored(again) == 1, 15, "a scan after the restart")
    settle(0.3)
    assert again.stats["bad"] == 0 and len(quarantined(fleet_db)) == n_bad


def test_one_row_the_database_refuses_does_not_hold_back_its_batch(fleet_config, broker,
                                                                   fleet_db, workers, kiosks):
    """One batch of 200 scans and a summary, one scan in the middle refused by the
    database: the batch is split down to that scan; the 199 others and the summary
    are stored, that one is quarantined, nothing is retried forever."""
    refuse_row(fleet_db.kw["bind"], "dbpoison-02")
    config = ingest_config(fleet_config, broker,
                           mqtt_options={"batch_size": 300, "batch_seconds": 1.0})
    worker = workers.start(config, presence=False)
    before = worker.stats["batches"]
    k1 = kiosks("k1")
    ids = [f"batch-{i:04d}" for i in range(200)]
    ids[117] = "dbpoison-02"
    stream = [(messages.scan_topic("k1"), scan("k1", sid)) for sid in ids]
    stream.append((messages.summary_topic("k1"), summary("k1", "s" + "3" * 16)))
    k1.publish_many(stream)
    wait_for(lambda: worker.stats["acked"] == 201, 20, "the batch acknowledged")
    assert worker.stats["batches"] - before <= 2  # one batch (two at most), not per row
    assert sorted(sid for _, sid in scan_ids(fleet_db)) == sorted(set(ids) - {"dbpoison-02"})
    assert stored(worker, "summary") == 1
    rows = quarantined(fleet_db)
    assert [(r["kiosk_id"], r["kind"], r["reason"]) for r in rows] == [
        ("k1", "scan", "db_refused")]
    assert json.loads(bytes(rows[0]["raw"]))["id"] == "dbpoison-02"
    splits = worker.metrics.value("greengate_ingest_batch_splits_total")
    assert 1 <= splits <= 20  # a bisection, not a row-by-row rewrite
    assert worker.metrics.value("greengate_ingest_db_errors_total") == 0  # not the database's


def test_row_problems_are_told_from_the_database_being_down():
    orig = Exception("boom")
    assert row_problem(IntegrityError("INSERT", {}, orig))
    assert row_problem(DataError("INSERT", {}, orig))
    assert row_problem(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert row_problem(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert not row_problem(OperationalError("INSERT", {}, orig))  # down, locked: retried
    assert not row_problem(ProgrammingError("INSERT", {}, orig))  # a missing table: retried
    assert not row_problem(RuntimeError("a bug"))  # a bug: the worker exits non-zero
    # the quarantine's sentence about it: one printable line, whatever the driver says
    for orig in (sqlite3.IntegrityError(""), sqlite3.IntegrityError("first\nsecond\x00"),
                 sqlite3.IntegrityError("x" * 5000)):
        detail = _detail(IntegrityError("INSERT", {}, orig))
        assert detail.startswith("the database refused the row: IntegrityError: ")
        assert detail.isprintable() and len(detail) < 400 and "second" not in detail


# --- confirmations ---------------------------------------------------------------------------
def test_confirmations_name_new_and_duplicate_ids_in_small_messages(config, workers, kiosks,
                                                                    confirms):
    worker = workers.start(config, presence=False)
    k1, k2 = kiosks("k1"), kiosks("k2")
    ids = [f"conf-{i:04d}" for i in range(120)]
    k1.publish_many([(messages.scan_topic("k1"), good("k1", sid)) for sid in ids])
    k1.publish(messages.summary_topic("k1"),
               {**summary("k1", "s" + "4" * 16), "first": NOW - 90, "last": NOW - 9})
    k2.publish(messages.scan_topic("k2"), good("k2", "conf-k2-0001"))
    wait_for(lambda: len(confirms.ids("k1")) == 120 and confirms.ids("k1", "summaries")
             and confirms.ids("k2"), 15, "first confirmations")
    assert sorted(confirms.ids("k1")) == ids and confirms.ids("k2") == ["conf-k2-0001"]
    assert confirms.ids("k1", "summaries") == ["s" + "4" * 16]
    # a re-send (the kiosk's confirmation timed out): stored once, confirmed again
    k1.publish_many([(messages.scan_topic("k1"), good("k1", sid)) for sid in ids[:10]])
    wait_for(lambda: len(confirms.ids("k1")) == 130, 15, "the duplicates confirmed")
    assert worker.metrics.value("greengate_ingest_duplicates_total", kind="scan") == 10
    assert worker.metrics.value("greengate_ingest_confirmed_ids_total") == 132
    assert all(len(doc["scans"]) + len(doc["summaries"]) <= messages.CONFIRM_IDS
               for _, doc in confirms.received)
    assert not confirms.unparsed


# --- retire at once ----------------------------------------------------------------------------
def test_a_retired_kiosk_is_refused_from_the_moment_of_its_retirement(config, fleet_db, workers,
                                                                      kiosks, confirms):
    with fleet_db() as s:
        s.add(Kiosk(id="k1", state="online", detail="", session=1))
        s.commit()
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    k1.publish(messages.scan_topic("k1"), good("k1", "before-retire"))
    wait_for(lambda: confirms.ids("k1") == ["before-retire"], 15, "stored and confirmed")
    assert not worker.store.directory.due()  # its reloaded view says k1 is not retired ...
    with fleet_db() as s:
        fleet_kiosks.retire(s, s.get(Kiosk, "k1"), reason="stolen", actor="test",
                            at=time.time())
        s.commit()
    # ... and the very next scan is refused all the same, with no reload
    k1.publish(messages.scan_topic("k1"), good("k1", "after-retire"))
    k1.publish(messages.summary_topic("k1"),
               {**summary("k1", "s" + "5" * 16), "first": NOW - 90, "last": NOW - 9})
    m = worker.metrics
    wait_for(lambda: m.value("greengate_ingest_retired_kiosk_messages_total", kind="summary")
             == 1, 15, "refused")
    assert m.value("greengate_ingest_retired_kiosk_messages_total", kind="scan") == 1
    assert worker.store.directory.retired_ids == frozenset()  # the reload never happened
    assert scan_ids(fleet_db) == [("k1", "before-retire")]
    settle(0.3)
    assert confirms.ids("k1") == ["before-retire"]  # never confirmed
    assert confirms.ids("k1", "summaries") == []
    assert worker.stats["acked"] == 3  # yet acknowledged: the broker forgets them


def test_retirement_is_exact_under_concurrent_batches(config, fleet_db, workers, kiosks):
    """Scans stream in while the kiosk is retired: every stored scan was committed
    before the retirement (received <= retired_at's commit), none after."""
    with fleet_db() as s:
        s.add(Kiosk(id="k1", state="online", detail="", session=1))
        s.commit()
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    ids = [f"race-{i:05d}" for i in range(400)]
    infos = [k1.publish(messages.scan_topic("k1"), good("k1", sid), wait=False)
             for sid in ids[:200]]
    wait_for(lambda: stored(worker) >= 20, 15, "the stream under way")
    with fleet_db() as s:
        fleet_kiosks.retire(s, s.get(Kiosk, "k1"), reason="stolen", actor="test",
                            at=time.time())
        s.commit()
    retired_commit = time.time()  # after the retirement's commit returned
    infos += [k1.publish(messages.scan_topic("k1"), good("k1", sid), wait=False)
              for sid in ids[200:]]
    for info in infos:
        info.wait_for_publish(30)
    m = worker.metrics
    wait_for(lambda: stored(worker) + m.value("greengate_ingest_retired_kiosk_messages_total",
                                              kind="scan") == 400, 30, "all taken in")
    from fleet.models import Scan
    with fleet_db() as s:
        received = list(s.scalars(select(Scan.received)))
    assert len(received) == stored(worker) < 400
    assert max(received) <= retired_commit
    # everything published after the retirement's commit was refused
    stored_ids = {sid for _, sid in scan_ids(fleet_db)}
    assert not stored_ids & set(ids[200:])


# --- a failing loop ------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["_batch", "_on_message"])
def test_a_failing_loop_exits_non_zero_without_acknowledging(config, fleet_db, workers, kiosks,
                                                             monkeypatch, broken):
    """A bug in the worker's loop, or in a paho callback (which would otherwise end paho's
    thread and leave the worker deaf): `run()` returns 1, nothing is acknowledged."""
    first = workers.start(config, worker="w1", presence=False)
    first.stop()  # w1's session stays: the broker queues its share meanwhile
    k1 = kiosks("k1")
    k1.publish_many([(messages.scan_topic("k1"), good("k1", f"held-{i:04d}"))
                     for i in range(5)])

    def fail(self, *args):
        raise RecursionError("maximum recursion depth exceeded (a bug)")
    monkeypatch.setattr(IngestWorker, broken, fail)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        args = Namespace(worker="w1", no_presence=True, leave=False, metrics_port=None)
        assert ingest.run(config, args) == 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    monkeypatch.undo()
    assert scan_ids(fleet_db) == []
    # nothing of the batch in hand was acknowledged: the restarted worker gets it all
    again = workers.start(config, worker="w1", presence=False)
    wait_for(lambda: stored(again) == 5, 20, "the held scans redelivered and stored")



def test_one_batch_from_many_kiosks_confirms_each_of_them(fleet_config, broker, fleet_db,
                                                          workers, kiosks, confirms):
    """One batch from 250 kiosks: 250 confirmations at once, each on its kiosk's topic,
    more than paho keeps in flight (20; it queues the rest), on one connection."""
    config = ingest_config(fleet_config, broker, ingest={"max_age_days": 400.0},
                           mqtt_options={"batch_size": 300, "batch_seconds": 1.0})
    worker = workers.start(config, presence=False)
    generation = worker._gen  # noqa: SLF001 - bumped by every connect and disconnect
    k = kiosks("k1")
    names = [f"many-{i:03d}" for i in range(250)]
    k.publish_many([(messages.scan_topic(n), good(n, f"scan-of-{n}")) for n in names])
    wait_for(lambda: all(confirms.ids(n) for n in names), 30, "a confirmation to each kiosk")
    assert worker._gen == generation and worker.connected  # noqa: SLF001 - never dropped
    assert worker.metrics.value("greengate_ingest_acks_dropped_total") == 0
    assert worker.metrics.value("greengate_ingest_confirmations_total") == 250


def test_confirmations_of_many_small_batches_are_sent_together(fleet_config, broker, workers,
                                                               kiosks, confirms):
    """A kiosk's ids wait up to [ingest] confirm_seconds for each other: 24 batches of 5
    give a handful of confirmations, not 24 (a publish costs the worker as much as
    storing a few scans); the last one still comes within about confirm_seconds."""
    config = ingest_config(fleet_config, broker, ingest={"max_age_days": 400.0,
                                                         "confirm_seconds": 0.5},
                           mqtt_options={"batch_size": 5, "batch_seconds": 0.01})
    worker = workers.start(config, presence=False)
    ids = [f"small-{i:04d}" for i in range(120)]
    kiosks("k1").publish_many([(messages.scan_topic("k1"), good("k1", sid)) for sid in ids])
    stored_at = time.monotonic()
    wait_for(lambda: stored(worker) == 120, 20, "stored")
    wait_for(lambda: len(confirms.ids("k1")) == 120, 10, "confirmed")
    assert time.monotonic() - stored_at < 5.0
    assert sorted(confirms.ids("k1")) == ids
    assert worker.stats["batches"] >= 20  # small batches indeed
    assert len([1 for k, _ in confirms.received if k == "k1"]) <= 6


def test_a_heartbeat_keeps_only_the_fields_the_fleet_knows(config, fleet_db, workers, kiosks):
    """Parsers pass unknown keys through unchecked; a structure 900 deep fits in a
    heartbeat. The tracker keeps the last heartbeat in the kiosk's row, which pages
    render: only the known fields get there."""
    workers.start(config, seen_flush=0.2)
    beat = messages.heartbeat(kiosk="k1", session=1, ts=time.time(), uptime=5.0,
                              bundles={"trust": 1}, outbox=3, clock="synced", lists="fresh",
                              cpu_temp=None, seq=7, confirmed=4)
    payload = messages.encode(beat)[:-1] + b',"x":' + b"[" * 900 + b"]" * 900 + b"}"
    assert messages.parse_heartbeat(payload, "k1")["x"]  # the parser lets it through
    kiosks("k1").publish(messages.heartbeat_topic("k1"), payload)

    def stored_beat():
        with fleet_db() as s:
            row = s.get(Kiosk, "k1")
            return row.heartbeat if row is not None else None
    wait_for(lambda: stored_beat() is not None, 15, "the heartbeat stored")
    assert stored_beat() == json.loads(messages.encode(beat))
