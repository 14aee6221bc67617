"""The two-tier drill (issue 17): two district Mosquittos bridged to a core one, each on
the configuration `greengate-provision` generates (tests/tiers.py); real kiosk processes
on both districts, the fleet's publisher and an ingest worker subprocess on the core.

While the kiosks keep deciding: d1's bridge is cut and restored, d2 is restarted, the
core is restarted. At the end the fleet holds exactly the scan ids the kiosks decided,
once each, every outbox is empty (each decision confirmed by the fleet, through the
bridges), and the kiosks got their lists through the bridges.
"""

from __future__ import annotations

import pytest

from tests.broker import wait_until
from tests.drillkit import Fleet, KioskProc, mint
from tests.ingestkit import Workers, scan_ids
from tests.test_drills import Stream, outbox_ids
from tests.tiers import Tiers


@pytest.fixture
def tiers(tmp_path):
    t = Tiers(tmp_path / "tiers", ("d1", "d2")).start()
    yield t
    t.close()


def _more(kiosks, n: int, what: str, timeout: float = 30.0) -> None:
    marks = {k.kid: len(k.scans()) for k in kiosks}
    wait_until(lambda: all(len(k.scans()) >= marks[k.kid] + n for k in kiosks), timeout, what)


def test_every_decision_is_stored_once_through_bridge_cut_and_broker_restarts(
        tmp_path, tiers, es256):
    fleet = Fleet(tmp_path, tiers.core, es256, tls=tiers.fleet_tls())
    workers = Workers(tmp_path)
    made: list[KioskProc] = []
    try:
        fleet.start_publisher()
        workers.spawn(fleet.config, "1")
        for kid, district in (("t-k1", "d1"), ("t-k2", "d1"), ("t-k3", "d2")):
            made.append(KioskProc(tmp_path, tiers.district[district], fleet.public_pem, kid,
                                  confirm_timeout=3.0).start())
        for k in made:
            k.wait_ready()  # the lists came down the bridges
        k1, k2, k3 = made
        texts = [mint(es256)[0] for _ in range(3)] + ["HC1:NOT-A-CERTIFICATE"]
        with Stream(made, texts, interval=0.1):
            _more(made, 10, "a stream through both bridges")
            wait_until(lambda: len(scan_ids(fleet.sessions)) >= 20, 30,
                       "scans stored through the bridges")

            tiers.cut("d1")  # the link breaks: d1 queues what goes up
            _more([k1, k2], 30, "scans on d1 while its bridge is cut")
            held_during_cut = outbox_ids(k1)
            tiers.restore("d1")
            tiers.wait_bridged("d1")
            _more(made, 10, "scans after the bridge is back")

            tiers.restart_district("d2")
            _more(made, 10, "scans after d2's restart")

            tiers.restart_core()
            _more(made, 10, "scans after the core's restart")

        decided = {k.kid: {sid for sid, _, _ in k.scans()} for k in made}
        for k in made:
            wait_until(lambda: not outbox_ids(k), 90,
                       f"{k.kid}'s outbox emptied by the fleet's confirmations")
        have: dict[str, set[str]] = {k.kid: set() for k in made}
        rows = scan_ids(fleet.sessions)
        for kid, sid in rows:
            have.setdefault(kid, set()).add(sid)
        missing = {kid: decided[kid] - have[kid] for kid in decided}
        phantom = {kid: have[kid] - decided.get(kid, set()) for kid in have}
        assert not any(missing.values()), {k: len(v) for k, v in missing.items()}
        assert not any(phantom.values()), {k: sorted(v)[:5] for k, v in phantom.items()}
        assert len(rows) == len(set(rows)) == sum(len(v) for v in decided.values())
        # the cut did what it is for: d1's kiosks held unconfirmed decisions meanwhile
        assert held_during_cut, "no decision waited for a confirmation during the cut"
        for k in made:
            assert k.stop() == 0, k.log()[-3000:]
    finally:
        for k in made:
            k.close()
        workers.close()
        fleet.close()
