"""The ingest worker (fleet/ingest.py) against a real Mosquitto (TLS, client
certificates) and real databases (SQLite and PostgreSQL through `fleet_config`).

Workers run in this process (threads) unless a test kills or signals one: those
run `python -m fleet.cli ingest` as a subprocess, as systemd does.
"""

import contextlib
import json
import signal
import sqlite3
import urllib.request

import pytest
from sqlalchemy import select, text

from fleet.ingest import bad_reason
from fleet.models import RETIRED, District, Kiosk, Location, Scan
from fleet.sqlinsert import BulkInsert
from greengate import messages
from tests.broker import free_port
from tests.ingestkit import (KioskClient, Workers, count_scans, ingest_config, kiosk,
                             quarantined, scan, scan_ids, settle, summaries, summary, wait_for)


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


@pytest.fixture
def config(fleet_config, broker):
    return ingest_config(fleet_config, broker)


@pytest.fixture
def kiosks(broker):
    """kiosks(identity) -> a raw KioskClient with that certificate (closed at the end)."""
    made = []

    def make(identity, **options):
        made.append(KioskClient(broker, identity, **options))
        return made[-1]

    yield make
    for k in made:
        k.close()


def stored(worker, kind="scan") -> float:
    return worker.metrics.value("greengate_ingest_stored_total", kind=kind)


def dups(worker, kind="scan") -> float:
    return worker.metrics.value("greengate_ingest_duplicates_total", kind=kind)


def place(fleet_db, kid, *, retired=False):
    """An enrolled kiosk at a location in a district; (location id, district id)."""
    with fleet_db() as s:
        district = District(code=f"d-{kid}", name="Quận 1")
        location = Location(code=f"l-{kid}", name="Chợ Bến Thành", district=district)
        s.add_all([district, location])
        s.flush()
        s.add(Kiosk(id=kid, location_id=location.id, state=RETIRED if retired else "never_seen",
                    detail="", session=0))
        s.commit()
        return location.id, district.id


# --- the happy path and idempotency -----------------------------------------------------
def test_replayed_stream_counts_once(config, fleet_db, workers, kiosks):
    loc, dist = place(fleet_db, "k1")
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    stream = [(messages.scan_topic("k1"), scan("k1", f"scan-{i:04d}", ts=1633420800 + i))
              for i in range(120)]
    stream += [(messages.summary_topic("k1"), summary("k1", f"s{i:016x}", count=i + 1))
               for i in range(2)]
    # a decision the kiosk could not read back is summarized as "unknown" (protocol.md)
    stream.append((messages.summary_topic("k1"),
                   {**summary("k1", f"s{2:016x}", count=3), "decision": "unknown"}))
    k1.publish_many(stream)
    wait_for(lambda: stored(worker) == 120 and stored(worker, "summary") == 3, 20, "first copy")
    k1.publish_many(stream[::-1])  # the outbox replays, the broker redelivers: again
    wait_for(lambda: dups(worker) == 120 and dups(worker, "summary") == 3, 20, "second copy")

    rows = scan_ids(fleet_db)
    assert sorted(rows) == sorted(("k1", f"scan-{i:04d}") for i in range(120))
    assert stored(worker) == 120 and stored(worker, "summary") == 3
    assert [(s.count, s.decision, s.location_id) for s in summaries(fleet_db)] == [
        (1, "red", loc), (2, "red", loc), (3, "unknown", loc)]  # added once each
    with fleet_db() as s:
        first = s.scalar(select(Scan).where(Scan.scan_id == "scan-0007"))
    # as the kiosk sent it, placed where the kiosk stands at ingest time
    assert (first.ts, first.decision, first.reason, first.cert_type, first.cert_hash,
            first.holder, first.policy) == (1633420807.0, "green", "ok", "v", "ab" * 16,
                                            "cd" * 16, "hcmc-2021")
    assert (first.location_id, first.district_id) == (loc, dist)
    assert first.received >= first.ts
    assert worker.metrics.value("greengate_ingest_messages_total", kind="scan") == 240
    assert worker.metrics.value("greengate_ingest_batch_size_count") >= 1
    assert worker.metrics.value("greengate_ingest_lag_seconds_count") == 240
    assert worker.metrics.value("greengate_ingest_commit_seconds_count") >= 1


def test_unknown_kiosks_are_stored_and_retired_ones_refused(config, fleet_db, workers,
                                                             kiosks):
    place(fleet_db, "gone", retired=True)
    worker = workers.start(config, presence=False)
    stranger, gone = kiosks("stranger"), kiosks("gone")
    gone.publish(messages.scan_topic("gone"), scan("gone", "scan-0001"))
    gone.publish(messages.summary_topic("gone"), summary("gone", "s" + "0" * 16))
    stranger.publish(messages.scan_topic("stranger"), scan("stranger", "scan-0001"))
    wait_for(lambda: stored(worker) == 1, 15, "the stranger's scan")
    m = worker.metrics
    wait_for(lambda: m.value("greengate_ingest_retired_kiosk_messages_total", kind="summary")
             == 1, 15, "the retired kiosk's summary refused")

    assert scan_ids(fleet_db) == [("stranger", "scan-0001")]  # nothing of the retired one
    assert summaries(fleet_db) == []
    new = kiosk(fleet_db, "stranger")  # created, so the dashboard shows it
    assert (new.state, new.location_id, new.enrolled_at) == ("never_seen", None, None)
    assert new.deployment == "test" and "not enrolled" in new.detail
    assert kiosk(fleet_db, "gone").state == RETIRED  # untouched
    assert m.value("greengate_ingest_unknown_kiosk_messages_total", kind="scan") == 1
    assert m.value("greengate_ingest_retired_kiosk_messages_total", kind="scan") == 1
    # refused, yet acknowledged: the broker does not hand them to the next worker
    worker.stop()
    again = workers.start(config, worker="1", presence=False)
    settle(1.0)
    assert again.metrics.value("greengate_ingest_retired_kiosk_messages_total",
                               kind="scan") == 0


@pytest.mark.parametrize("per_statement", [1, 3])
def test_bulk_insert_counts_what_it_inserted(fleet_db, per_statement):
    """fleet/sqlinsert.py on both databases: ON CONFLICT DO NOTHING, the rowcount of
    what went in, columns in any order, batches not a multiple of the statement size."""
    engine = fleet_db.kw["bind"]
    columns = ["scan_id", "kiosk_id", "ts", "received", "decision", "reason", "policy"]
    bulk = BulkInsert(engine, Scan.__table__, ["kiosk_id", "scan_id", "ts"], columns,
                      per_statement=per_statement)
    rows = [(f"scan-{i:04d}", f"k{i % 2}", 1.0 + i, 2.0, "green", "ok", "p") for i in range(7)]
    with engine.begin() as c:
        assert bulk.execute(c, rows) == 7
        assert bulk.execute(c, rows[2:5] + [("scan-new0", "k1", 9.0, 2.0, "red", "x", "p")]) == 1
        assert bulk.execute(c, []) == 0
    with fleet_db() as session:
        got = {(k, sid): ts for k, sid, ts in session.execute(
            select(Scan.kiosk_id, Scan.scan_id, Scan.ts))}
    assert got == {**{(f"k{i % 2}", f"scan-{i:04d}"): 1.0 + i for i in range(7)},
                   ("k1", "scan-new0"): 9.0}


# --- bad messages ------------------------------------------------------------------------
def test_bad_messages_are_counted_and_the_worker_keeps_going(config, fleet_db, workers, kiosks,
                                                             caplog):
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    bad = [
        (topic, b"\xff not json"),
        (topic, b"[1, 2]"),
        (topic, json.dumps({**scan("k1", "scan-big"), "pad": "x" * 5000}).encode()),  # > 4096
        (topic, scan("k2", "scan-0002")),  # names another kiosk than its topic
        (topic, scan("k1", "scan-0003", decision="amber")),
        (topic, {**scan("k1", "scan-0004"), "v": 2}),
        (messages.summary_topic("k1"), summary("k1", "not-a-summary-id")),
        ("gg/v1/kiosk/k1/scan", scan("k1", "x")),  # scan id too short
    ]
    k1.publish_many(bad + [(topic, scan("k1", "scan-good"))])
    wait_for(lambda: stored(worker) == 1, 15, "the good scan after the bad ones")
    m = worker.metrics
    labels = {("scan", "utf8"): 1, ("scan", "not_object"): 1, ("scan", "oversized"): 1,
              ("scan", "wrong_kiosk"): 1, ("scan", "field_decision"): 1, ("scan", "version"): 1,
              ("summary", "field_id"): 1, ("scan", "field_id"): 1}
    for (kind, reason), n in labels.items():
        assert m.value("greengate_ingest_bad_messages_total", kind=kind, reason=reason) == n, \
            (kind, reason)
        assert m.value("greengate_ingest_quarantined_total", kind=kind, reason=reason) == n
    assert worker.stats["bad"] == len(bad)
    # each in the quarantine, under the kiosk of its topic, with its first bytes
    rows = quarantined(fleet_db)
    assert sorted((r["kind"], r["reason"]) for r in rows) == sorted(labels)
    assert {r["kiosk_id"] for r in rows} == {"k1"}
    assert bytes(next(r["raw"] for r in rows if r["reason"] == "utf8")) == b"\xff not json"
    assert next(r["size"] for r in rows if r["reason"] == "oversized") > 4096
    assert scan_ids(fleet_db) == [("k1", "scan-good")]
    # logged with the kiosk id of the topic, whatever the payload claims
    assert "bad scan message from kiosk k1: message names kiosk 'k2'" in caplog.text
    # acknowledged like the good ones: a restarted worker gets none of them again
    worker.stop()
    again = workers.start(config, presence=False)
    k1.publish(topic, scan("k1", "scan-after"))
    wait_for(lambda: stored(again) == 1, 15, "a scan after the restart")
    assert again.stats["bad"] == 0


def test_bad_reason_labels_are_bounded():
    assert bad_reason(messages.MessageError("message is 5000 bytes, limit 4096")) == "oversized"
    assert bad_reason(messages.MessageError("field 'holder' is not hex")) == "field_holder"
    assert bad_reason(messages.MessageError("not JSON: nested too deeply")) == "too_deep"
    assert bad_reason(messages.MessageError("number NaN is not allowed")) == "not_finite"
    assert bad_reason(messages.MessageError("not JSON: the message is not valid UTF-8")) == "utf8"
    assert bad_reason(messages.MessageError("anything else, with a value 42")) == "other"


# --- crashes, restarts, signals ------------------------------------------------------------
def scrape(port: int, name: str, **labels) -> float:
    """One sample from a worker subprocess's --metrics-port."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels
                   else "")
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


@contextlib.contextmanager
def write_lock(engine):
    """Another client holding the scan table: the worker's inserts wait (they do not fail)."""
    if engine.dialect.name == "sqlite":
        holder = sqlite3.connect(engine.url.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock of the whole file
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with engine.connect() as holder:
        with holder.begin():
            holder.execute(text("LOCK TABLE scan IN SHARE ROW EXCLUSIVE MODE"))
            yield


def test_worker_killed_mid_batch_loses_nothing(fleet_config, broker, fleet_db, workers, kiosks):
    config = ingest_config(fleet_config, broker,
                           mqtt_options={"batch_size": 300, "batch_seconds": 0.5})
    port = free_port()
    proc = workers.spawn(config, "w1", "--no-presence", "--metrics-port", str(port))
    wait_for(lambda: "subscribed" in workers.log("w1"), 20, "worker subscribed")
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    ids = [f"scan-{i:05d}" for i in range(600)]
    k1.publish_many([(topic, scan("k1", sid)) for sid in ids[:300]])
    wait_for(lambda: count_scans(fleet_db) == 300, 20, "a first batch committed")
    with write_lock(fleet_db.kw["bind"]):
        k1.publish_many([(topic, scan("k1", sid)) for sid in ids[300:450]])
        # the worker is inside its write of these, waiting for the lock ...
        wait_for(lambda: scrape(port, "greengate_ingest_writing") == 1, 10, "a batch writing")
        k1.publish_many([(topic, scan("k1", sid)) for sid in ids[450:500]])
        wait_for(lambda: scrape(port, "greengate_ingest_pending_messages") >= 200, 10,
                 "the next ones waiting behind it")
        proc.send_signal(signal.SIGKILL)  # ... when it dies: nothing of it was committed
        proc.wait(10)
    assert count_scans(fleet_db) == 300
    k1.publish_many([(topic, scan("k1", sid)) for sid in ids[500:]])  # queued for w1

    # same name, same session (quick batches now): the broker redelivers what w1 had not
    # acknowledged, and what was queued for it
    again = workers.start(ingest_config(fleet_config, broker), worker="w1", presence=False)
    wait_for(lambda: count_scans(fleet_db) >= 600, 30, "every scan after the restart")
    settle()
    assert sorted(scan_ids(fleet_db)) == [("k1", sid) for sid in ids]  # all, each once
    assert stored(again) == 300


def test_sigterm_commits_and_acknowledges_the_batch_in_hand(fleet_config, broker, fleet_db,
                                                            workers, kiosks):
    config = ingest_config(fleet_config, broker,
                           mqtt_options={"batch_size": 1000, "batch_seconds": 30.0})
    proc = workers.spawn(config, "w1", "--no-presence")
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    wait_for(lambda: "subscribed" in workers.log("w1"), 20, "worker subscribed")
    k1.publish_many([(topic, scan("k1", f"scan-{i:04d}")) for i in range(80)])
    settle(0.5)
    assert count_scans(fleet_db) == 0  # held in a 30 s batch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.log("w1")
    assert count_scans(fleet_db) == 80  # committed on the way out
    # ... and acknowledged: the same worker name (quick batches now) gets no redelivery
    again = workers.start(ingest_config(fleet_config, broker), worker="w1", presence=False)
    k1.publish(topic, scan("k1", "scan-sync"))
    # (stored counts at the commit, acked just after it: wait for both)
    wait_for(lambda: stored(again) == 1 and again.stats["acked"] == 1, 20, "a new scan")
    settle()
    assert dups(again) == 0 and stored(again) == 1 and again.stats["acked"] == 1


def test_broker_restart_is_ridden_out(config, fleet_db, workers, kiosks, broker):
    worker = workers.start(config, presence=False)
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    k1.publish_many([(topic, scan("k1", f"before-{i:05d}")) for i in range(50)])
    wait_for(lambda: stored(worker) == 50, 15, "before the restart")
    k1.close()
    broker.stop()
    wait_for(lambda: not worker.connected, 10, "worker noticed")
    broker.start()
    wait_for(lambda: worker.connected, 20, "worker reconnected")
    k1 = kiosks("k1")
    k1.publish_many([(topic, scan("k1", f"after-{i:05d}")) for i in range(50)])
    wait_for(lambda: stored(worker) == 100, 15, "after the restart")
    assert count_scans(fleet_db) == 100


def test_database_errors_are_retried_and_nothing_uncommitted_is_acknowledged(
        config, fleet_db, workers, kiosks):
    worker = workers.start(config, presence=False, stop_grace=1.0)
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    engine = fleet_db.kw["bind"]
    with engine.begin() as c:  # the table is gone: every insert fails
        c.execute(text("ALTER TABLE scan RENAME TO scan_away"))
    k1.publish_many([(topic, scan("k1", f"scan-{i:04d}")) for i in range(30)])
    wait_for(lambda: worker.metrics.value("greengate_ingest_db_errors_total") >= 1, 15,
             "a failed commit")
    assert worker.stats["acked"] == 0
    # stopping with the database down: gives up after a grace period, acknowledges nothing
    worker.stop()
    with engine.begin() as c:
        c.execute(text("ALTER TABLE scan_away RENAME TO scan"))
    assert count_scans(fleet_db) == 0
    again = workers.start(config, worker=worker.name, presence=False)
    wait_for(lambda: stored(again) == 30, 20, "redelivered and stored")
    # and a table that comes back while the worker runs: the batch goes in on a retry
    with engine.begin() as c:
        c.execute(text("ALTER TABLE scan RENAME TO scan_away"))
    k1.publish_many([(topic, scan("k1", f"late-{i:04d}")) for i in range(10)])
    wait_for(lambda: again.metrics.value("greengate_ingest_db_errors_total") >= 1, 15,
             "a failed commit")
    with engine.begin() as c:
        c.execute(text("ALTER TABLE scan_away RENAME TO scan"))
    wait_for(lambda: stored(again) == 40, 30, "the retried batch")
    assert count_scans(fleet_db) == 40


# --- several workers ---------------------------------------------------------------------
def test_two_workers_split_the_load_without_duplicates(config, fleet_db, workers, kiosks):
    a = workers.start(config, worker="a", presence=False)
    b = workers.start(config, worker="b", presence=False)
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    k1.publish_many([(topic, scan("k1", f"scan-{i:05d}")) for i in range(400)])
    wait_for(lambda: count_scans(fleet_db) == 400, 20, "every scan")
    settle()
    assert stored(a) > 0 and stored(b) > 0, (stored(a), stored(b))
    assert stored(a) + stored(b) == 400 and dups(a) + dups(b) == 0
    assert len(set(scan_ids(fleet_db))) == 400


def test_leave_drains_the_session_and_ends_it(config, fleet_db, workers, kiosks):
    a = workers.start(config, worker="a", presence=False)
    b = workers.start(config, worker="b", presence=False)
    b.stop()  # down: the broker keeps queueing b's share for it
    k1 = kiosks("k1")
    topic = messages.scan_topic("k1")
    k1.publish_many([(topic, scan("k1", f"one-{i:04d}")) for i in range(100)])
    wait_for(lambda: stored(a) > 0, 10, "a's share")
    settle()
    assert count_scans(fleet_db) < 100  # b's share waits in b's session

    leaving = workers.start(config, worker="b", leave=True, leave_idle=0.5)
    assert leaving.wait(30), "the leaving worker did not finish"
    leaving.stop()
    assert count_scans(fleet_db) == 100
    # b's session is gone: everything new goes to a
    k1.publish_many([(topic, scan("k1", f"two-{i:04d}")) for i in range(60)])
    wait_for(lambda: count_scans(fleet_db) == 160, 15, "the new scans")
    # a's counter follows its commit: counted a moment after the rows are there
    wait_for(lambda: stored(a) == 160 - stored(leaving), 10, "a stored all the new scans")


# --- metrics endpoint ------------------------------------------------------------------------
def test_metrics_endpoint(config, workers, kiosks):
    worker = workers.start(config, presence=False)
    port = free_port()
    server, thread = worker.metrics.serve(port)
    try:
        kiosks("k1").publish(messages.scan_topic("k1"), scan("k1", "scan-0001"))
        wait_for(lambda: stored(worker) == 1, 15, "a scan")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
    text_ = body.decode()
    assert 'greengate_ingest_stored_total{kind="scan"} 1.0' in text_
    assert "greengate_ingest_connected 1.0" in text_
    assert 'greengate_presence_kiosks{state="online"}' in text_
