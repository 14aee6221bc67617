"""Ingest across hosts (docs/fleet.md#scaling): worker processes joining and leaving the
shared subscription while kiosks publish, on a real Mosquitto (TLS, client certificates)
and the real PostgreSQL several hosts would share.

Each worker is `python -m fleet.cli ingest --worker N --standby`, as another host runs
it: the first takes the presence lock, the others ingest scans and stand by; when the
tracker dies (kill -9) or stops, a standby takes the lock and tracks presence.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from greengate import messages
from tests.ingestkit import (Confirmations, KioskClient, Workers, count_scans, ingest_config,
                             kiosk, scan, scan_ids, wait_for)

KIOSKS = [f"kh{i:02d}" for i in range(8)]
RATE = 250.0  # scans a second, over every kiosk


@pytest.fixture
def pg_config(fleet_config, broker, database):
    if database.backend != "postgresql":
        pytest.skip("several ingest hosts share a PostgreSQL; SQLite is one host's")
    return ingest_config(fleet_config, broker, presence={"keepalive": 30.0, "sweep": 0.2})


class Stream:
    """Scans from every kiosk, round robin, at RATE, until stopped: what was sent."""

    def __init__(self, clients: dict[str, KioskClient]):
        self.clients = clients
        self.sent: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        n, start = 0, time.monotonic()
        while not self._stop.is_set():
            kid = KIOSKS[n % len(KIOSKS)]
            sid = f"s-{n:06d}"
            self.clients[kid].publish(messages.scan_topic(kid), scan(kid, sid), wait=False)
            self.sent.append((kid, sid))
            n += 1
            delay = start + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        for client in self.clients.values():  # every PUBACK: the broker has them all
            wait_for(lambda c=client: not c.client._out_messages, 30, "every PUBACK")  # noqa: SLF001


def trackers(workers: Workers, names) -> list[str]:
    """The workers whose log says they took the presence lock at start or later."""
    return [n for n in names
            if "tracking presence" in workers.log(n) or "tracks presence now" in workers.log(n)]


def lock_holders(database) -> int:
    with database.cluster.connect(database.name) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()[0]


def test_workers_join_and_leave_under_load(pg_config, broker, fleet_db, database, tmp_path):
    workers = Workers(tmp_path)
    clients = {kid: KioskClient(broker, kid) for kid in KIOSKS}
    confirms = Confirmations(broker)
    stream = None
    try:
        def up(name, *extra):
            proc = workers.spawn(pg_config, name, "--standby", *extra)
            wait_for(lambda: "subscribed" in workers.log(name), 20, f"{name} subscribed")
            return proc

        w1 = up("w1")
        assert trackers(workers, ["w1"]) == ["w1"]
        stream = Stream(clients)
        wait_for(lambda: count_scans(fleet_db) > 100, 20, "w1 storing")
        w2, w3 = up("w2"), up("w3")  # join mid-stream
        assert trackers(workers, ["w1", "w2", "w3"]) == ["w1"]
        assert "standing by" in workers.log("w2") and "standing by" in workers.log("w3")
        time.sleep(1.5)
        w2.send_signal(signal.SIGTERM)  # a host shut down: its batch in hand committed
        assert w2.wait(20) == 0, workers.log("w2")
        w1.send_signal(signal.SIGKILL)  # the tracker's host dies
        w1.wait(10)
        wait_for(lambda: trackers(workers, ["w2", "w3"]) == ["w3"], 15,
                 "the standby w3 tracks presence")
        w4 = up("w4")
        time.sleep(1.5)
        # w2's host is removed for good: its session (queued share) drained, then ended
        assert workers.spawn(pg_config, "w2", "--leave").wait(30) == 0, workers.log("w2")
        time.sleep(1.0)
        stream.stop()
        # w1's host comes back only to leave: what the broker queued for it is ingested
        assert workers.spawn(pg_config, "w1", "--leave").wait(30) == 0, workers.log("w1")

        sent = sorted(stream.sent)
        assert len(sent) > 1000
        wait_for(lambda: count_scans(fleet_db) >= len(sent), 30, "every scan stored")
        assert sorted(scan_ids(fleet_db)) == sent  # every scan, each once
        # committed by w1 but not yet confirmed when it was killed: unconfirmed, a kiosk
        # sends them again from its outbox; the insert absorbs them, a worker confirms
        settle_confirms = lambda: {(k, s) for k, s in sent} - {  # noqa: E731
            (k, s) for k in KIOSKS for s in confirms.ids(k)}
        wait_for(lambda: len(settle_confirms()) < len(sent) // 10, 20, "confirmations")
        time.sleep(1.0)
        again = sorted(settle_confirms())
        for kid, sid in again:
            clients[kid].publish(messages.scan_topic(kid), scan(kid, sid), wait=False)
        wait_for(lambda: not settle_confirms(), 20, "every scan confirmed to its kiosk")
        assert sorted(scan_ids(fleet_db)) == sent  # the resent ones stored once still
        assert not confirms.unparsed
        for name in ("w1", "w2", "w3", "w4"):
            assert "Traceback" not in workers.log(name), workers.log(name)

        # exactly one tracker, and it works: a kiosk that comes online now is seen
        assert lock_holders(database) == 1
        fresh = KioskClient(broker, "kh-new")
        fresh.publish(messages.presence_topic("kh-new"),
                      messages.presence(kiosk="kh-new", session=1, state="online"),
                      retain=True)
        wait_for(lambda: getattr(kiosk(fleet_db, "kh-new"), "state", None) == "online", 15,
                 "the new tracker records presence")
        fresh.publish(messages.presence_topic("kh-new"), b"", retain=True)  # leave no trace
        fresh.close()

        w3.send_signal(signal.SIGTERM)  # the tracker stops: the last standby takes over
        assert w3.wait(20) == 0, workers.log("w3")
        wait_for(lambda: "tracks presence now" in workers.log("w4"), 15, "w4 tracks presence")
        assert lock_holders(database) == 1
        w4.send_signal(signal.SIGTERM)
        assert w4.wait(20) == 0
        wait_for(lambda: lock_holders(database) == 0, 10, "the lock freed with the last")
    finally:
        if stream is not None:
            stream._stop.set()
        workers.close()
        confirms.close()
        for client in clients.values():
            client.close()
