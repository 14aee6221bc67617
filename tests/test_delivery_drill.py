"""The delivery drill of issue 12: every decision a kiosk made reaches the fleet's
database exactly once, whatever the broker and the ingest do in between.

Real processes only: Mosquitto (TLS, client certificates, persistence), the fleet's
publisher, a `greengate-fleet ingest` worker subprocess, three `greengate-kiosk run`
processes fed by scanner FIFOs. The faults, in the order that lost scans before the
kiosks waited for the fleet's confirmation (a broker restarted while the ingest worker
is down forgets the worker's shared subscription, acknowledges the kiosks' scans and
drops them):

1. the ingest worker SIGKILLed mid-batch, then the broker stopped and started while the
   worker is down; the kiosks reconnect and publish into a broker that has no
   subscriber for them; the worker comes back;
2. a kiosk SIGKILLed with scans published and not yet confirmed, restarted on its outbox;
3. the broker SIGKILLed (a crash: its persistence file is older than its state);
4. the broker SIGKILLed again while the ingest worker is down.

Then the stream stops, the kiosks drain, and the fleet must hold exactly the scan ids
the kiosks decided (their logs, plus what each killed kiosk's outbox held at the kill):
none missing, none twice, none that nobody decided.
"""

from __future__ import annotations

import time

from tests.broker import wait_until
from tests.drillkit import mint
from tests.ingestkit import Workers, scan_ids
from tests.test_drills import Stream, drill, outbox_ids  # noqa: F401  (drill: fixture)

PAUSE = 3.0  # seconds the kiosks publish into a broker nobody reads from


def _more(kiosks, n: int, what: str, timeout: float = 20.0) -> None:
    marks = {k.kid: len(k.scans()) for k in kiosks}
    wait_until(lambda: all(len(k.scans()) >= marks[k.kid] + n for k in kiosks), timeout, what)


def test_drill_every_decision_stored_once_through_broker_and_ingest_faults(drill):
    fleet = drill.fleet
    workers = Workers(drill.tmp)
    try:
        worker = workers.spawn(fleet.config, "1")
        texts = [mint(drill.issuer)[0] for _ in range(4)] + ["HC1:NOT-A-CERTIFICATE"]
        kiosks = [drill.kiosk(f"dd-k{i}", confirm_timeout=3.0) for i in (1, 2, 3)]
        for k in kiosks:
            k.wait_ready()
        k1, k2, k3 = kiosks
        held: dict[str, set[str]] = {k.kid: set() for k in kiosks}
        with Stream(kiosks, texts, interval=0.1):
            _more(kiosks, 10, "a stream")

            # 1. worker killed mid-batch; broker restarted while the worker is down
            worker.kill()
            worker.wait(10)
            drill.broker.stop()
            drill.broker.start()
            _more([k2, k3], int(PAUSE * 10), "scans into a broker nobody reads from")
            worker = workers.spawn(fleet.config, "1")

            # 2. a kiosk killed with scans published and not yet confirmed
            _more(kiosks, 10, "scans after the worker is back")
            k1.kill()
            held[k1.kid] |= outbox_ids(k1)
            k1.start()
            k1.wait_ready()

            # 3. the broker crashes
            _more(kiosks, 10, "scans before the crash")
            drill.broker.kill()
            time.sleep(1.0)
            drill.broker.start()

            # 4. the broker crashes while the worker is down
            _more(kiosks, 10, "scans after the crash")
            worker.kill()
            worker.wait(10)
            drill.broker.kill()
            drill.broker.start()
            _more([k2, k3], 20, "scans while the worker is down")
            k3.kill()
            held[k3.kid] |= outbox_ids(k3)
            k3.start()
            worker = workers.spawn(fleet.config, "1")
            _more(kiosks, 10, "scans at the end")

        decided = {k.kid: {sid for sid, _, _ in k.scans()} | held[k.kid] for k in kiosks}

        def stored() -> dict[str, set[str]]:
            by: dict[str, set[str]] = {k.kid: set() for k in kiosks}
            for kid, sid in scan_ids(fleet.sessions):
                by.setdefault(kid, set()).add(sid)
            return by

        for k in kiosks:
            wait_until(lambda: not outbox_ids(k), 90, f"{k.kid}'s outbox emptied by "
                                                     "the fleet's confirmations")
        have = stored()
        missing = {kid: decided[kid] - have.get(kid, set()) for kid in decided}
        phantom = {kid: have[kid] - decided.get(kid, set()) for kid in have}
        assert not any(missing.values()), {k: len(v) for k, v in missing.items()}
        assert not any(phantom.values()), {k: sorted(v)[:5] for k, v in phantom.items()}
        rows = scan_ids(fleet.sessions)
        assert len(rows) == len(set(rows)) == sum(len(v) for v in decided.values())
        assert all(len(v) >= 60 for v in decided.values()), {k: len(v) for k, v in
                                                             decided.items()}
        # the drill did what it is for: the broker acknowledged scans and lost them (step
        # 1), and only the kiosks' re-sends of unconfirmed rows brought them to the fleet
        assert any("row(s) again: no confirmation" in k.log() for k in (k2, k3)), \
            k2.log()[-3000:]
        for k in kiosks:
            assert k.stop() == 0, k.log()[-3000:]
    finally:
        workers.close()
