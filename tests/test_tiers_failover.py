"""Presence and failover across broker tiers (issue 17), on two district Mosquittos
bridged to a core one (tests/tiers.py), real kiosk processes and the fleet's presence
tracker (an ingest worker on the core):

- a bridge cut: the core holds its "0", the district's kiosk is "unreachable through
  bridge d1", not offline, also long past the silence timeout; once the bridge is back
  the kiosk is online again and what it decided meanwhile is stored;
- a district broker killed: its kiosk, which lists the core as its fallback, moves to
  the core and is online there (named by its heartbeats' broker), its scans confirmed;
- a kiosk stopped while its bridge is cut is offline (stopped) once the bridge is back.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from fleet import bridges
from fleet.models import OFFLINE, ONLINE, UNREACHABLE, Bridge, Kiosk
from tests.broker import wait_until
from tests.drillkit import Fleet, KioskProc, mint
from tests.ingestkit import Workers, scan_ids
from tests.tiers import Tiers

KEEPALIVE = 3.0  # the fleet's silence timeout is 1.5 x this


@pytest.fixture
def tiers(tmp_path):
    t = Tiers(tmp_path / "tiers", ("d1", "d2")).start()
    yield t
    t.close()


def kiosk_row(fleet, kid):
    with fleet.sessions() as s:
        k = s.get(Kiosk, kid)
        return None if k is None else (k.state, k.detail, (k.heartbeat or {}).get("broker"))


def bridge_row(fleet, name):
    with fleet.sessions() as s:
        b = s.get(Bridge, name)
        return None if b is None else b.connected


def test_unreachable_through_a_cut_bridge_not_offline_and_failover_to_the_core(
        tmp_path, tiers, es256):
    fleet = Fleet(tmp_path, tiers.core, es256, tls=tiers.fleet_tls(), keepalive=KEEPALIVE)
    with fleet.sessions() as s:
        for name in ("d1", "d2"):
            bridges.register(s, name, tiers.address(name))
        s.commit()
    workers = Workers(tmp_path)
    made: list[KioskProc] = []
    try:
        fleet.start_publisher()
        workers.start(fleet.config, worker="1")
        ka = KioskProc(tmp_path, tiers.district["d1"], fleet.public_pem, "ta", heartbeat=1.0,
                       confirm_timeout=2.0).start()
        kb = KioskProc(tmp_path, tiers.district["d2"], fleet.public_pem, "tb", heartbeat=1.0,
                       confirm_timeout=2.0, failover_after=5.0,
                       brokers=[tiers.address("d2"), tiers.address()]).start()
        made += [ka, kb]
        for k in made:
            k.wait_ready()
        wait_until(lambda: kiosk_row(fleet, "ta") == (ONLINE, "", tiers.address("d1")), 20,
                   "ta online through d1")
        wait_until(lambda: kiosk_row(fleet, "tb") == (ONLINE, "", tiers.address("d2")), 20,
                   "tb online through d2")
        text = mint(es256)[0]

        # 1. d1's bridge cut: unreachable, not offline, past the silence timeout too
        tiers.cut("d1")
        wait_until(lambda: bridge_row(fleet, "d1") is False, 15, "bridge d1 down on the fleet")
        wait_until(lambda: kiosk_row(fleet, "ta")[:2] == (UNREACHABLE, "through bridge d1"),
                   10, "ta unreachable through bridge d1")
        decided = ka.decide(text)[0]
        time.sleep(KEEPALIVE * 1.5 + 2)
        assert kiosk_row(fleet, "ta")[0] == UNREACHABLE
        assert kiosk_row(fleet, "tb")[0] == ONLINE
        tiers.restore("d1")
        wait_until(lambda: kiosk_row(fleet, "ta")[0] == ONLINE, 40,
                   f"ta online again ({kiosk_row(fleet, 'ta')}, bridge {bridge_row(fleet, 'd1')})")
        assert bridge_row(fleet, "d1") is True
        wait_until(lambda: ("ta", decided) in scan_ids(fleet.sessions), 20,
                   "the scan decided during the cut, stored")

        # 2. d2 dies: tb moves to the core, its fallback, and is online there
        tiers.kill_district("d2")
        wait_until(lambda: bridge_row(fleet, "d2") is False, 15, "bridge d2 down")
        wait_until(lambda: kiosk_row(fleet, "tb") == (ONLINE, "", tiers.address()), 30,
                   "tb online through the core")
        moved = kb.decide(text)[0]
        wait_until(lambda: ("tb", moved) in scan_ids(fleet.sessions), 20,
                   "tb's scan through the core, stored")

        # 3. a kiosk stopped while its bridge is cut: offline (stopped) once it is back
        tiers.cut("d1")
        wait_until(lambda: kiosk_row(fleet, "ta")[0] == UNREACHABLE, 15, "ta unreachable")
        assert ka.stop() == 0
        tiers.restore("d1")
        wait_until(lambda: kiosk_row(fleet, "ta")[:2] == (OFFLINE, "stopped"), 20,
                   "ta offline (stopped) once the bridge is back")
        with fleet.sessions() as s:
            assert {b.name: b.connected for b in s.scalars(select(Bridge))} == {
                "d1": True, "d2": False}
    finally:
        for k in made:
            k.close()
        workers.close()
        fleet.close()
