"""Enrolment mode through a REAL ingest (docs/rosters.md#managing-the-roster), on SQLite
and PostgreSQL: a real Mosquitto with the generated ACL, the real ingest worker, a scan
whose holder a kiosk's real Sealer sealed to the fleet. The scan at the kiosk in
enrolment mode links the worker by its holder (linked_via "kiosk"), closes the
enrolment, and the new roster bundle reaches that kiosk's own topic, retained, with
the holder on it; a scan at another kiosk, after the window or of a person on the
roster already links nothing. The kiosk is told nothing of the enrolment. And the web
half: a change through the API reaches the organisation's kiosks' topics by the app's
publisher, and no other organisation's kiosk."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from fleet import bundles, organisations, roster_workers, rosters
from fleet.models import RosterEnrolment, Worker
from greengate import bundle as bundle_format
from greengate import messages
from greengate import roster as roster_format
from greengate.sealing import identity_bytes
from provisioning.mosquitto_config import acl_text
from tests.broker import Subscriber
from tests.ingestkit import KioskClient, SealingKiosk, Workers, ingest_config, wait_for
from tests.rosterkit import AN, BINH, holder, seed

PERSON, OTHER = holder(AN), holder(BINH)


@pytest.fixture
def fleet(fleet_config, make_broker, fleet_db):
    # the production ACL: the test's fleet certificate (CN "fleet") is an ingest worker
    broker = make_broker(acl=acl_text(None, {"fleet": "ingest"}))
    config = ingest_config(fleet_config, broker)
    seed(fleet_db, config)
    return broker, config


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


class KioskSide(SealingKiosk):
    """The kiosk's sealing parts (tests/ingestkit.py) with an MQTT client that sends."""

    def __init__(self, broker, config, fleet_db, tmp_path, kiosk):
        super().__init__(config, fleet_db, tmp_path, kiosk)
        self.client = KioskClient(broker, kiosk)

    def scan(self, person, ts=None) -> dict:
        doc = super().scan(person, ts=ts or time.time())
        self.client.publish(messages.scan_topic(self.kiosk), doc)
        return doc

    def close(self):
        self.client.close()


def org(session, code):
    return organisations.by_code(session, code)


def enrol(fleet_db, config, kiosk, *, code="org-a", name=None, worker=None, at=None,
          minutes=5) -> int:
    with fleet_db() as s:
        enrolment, _ = roster_workers.open_enrolment(
            s, config, org(s, code), kiosk_id=kiosk, worker_id=worker, display_name=name,
            actor="manager-a", minutes=minutes, at=at or time.time())
        s.commit()
        return enrolment.id


def state(fleet_db, enrolment_id):
    with fleet_db() as s:
        e = s.get(RosterEnrolment, enrolment_id)
        w = s.get(Worker, e.worker_id)
        return e.result, e.closed_at, w.holder_key, w.linked_via


def test_a_scan_in_enrolment_mode_links_the_worker_and_the_roster_reaches_the_kiosk(
        fleet, fleet_db, workers, tmp_path):
    broker, config = fleet
    ka1 = KioskSide(broker, config, fleet_db, tmp_path, "ka1")
    ka2 = KioskSide(broker, config, fleet_db, tmp_path, "ka2")
    roster_reader = Subscriber(broker, [messages.roster_topic("ka1")], client_id="ka1",
                               persistent=False).start()
    try:
        first = enrol(fleet_db, config, "ka1", name="Nguyễn Văn An")
        # an enrolment that ended before the scan: nothing links through it
        late = enrol(fleet_db, config, "kb1", code="org-b", name="Trễ",
                     at=time.time() - 400, minutes=5)
        worker = workers.start(config, presence=False)
        # a scan at another kiosk of the organisation, not in enrolment mode: nothing
        ka2.scan(PERSON)
        time.sleep(1.0)
        assert state(fleet_db, first)[0] is None
        ka1.scan(PERSON)
        wait_for(lambda: state(fleet_db, first)[0] == "linked", 20, "the enrolment linked")
        result, closed, holder_key, via = state(fleet_db, first)
        assert closed is not None and via == "kiosk"
        assert holder_key == rosters.holder_entry_hex(config, "org-a", PERSON)
        # the kiosk's own topic carries the new roster, retained; the holder is on it
        wait_for(lambda: roster_reader.snapshot(), 20, "the roster on ka1's topic")
        message = roster_reader.snapshot()[-1]
        signer = bundles.load_signing_key(config)
        opened = bundle_format.open_bundle(message.payload, signer.public_key(), "test")
        roster = roster_format.parse_roster(opened.body, opened.version)
        assert opened.kind == "roster" and roster.organisation == "org-a"
        assert roster.member(identity_bytes(PERSON), None)
        assert not roster.member(identity_bytes(OTHER), None)
        # the enrolment is over: the next scan at ka1 is an ordinary scan
        ka1.scan(OTHER)
        time.sleep(1.0)
        assert state(fleet_db, first)[2] == holder_key
        # the late one never linked (it is shown as expired)
        assert state(fleet_db, late)[:3] == (None, None, None)
        with fleet_db() as s:
            e = s.get(RosterEnrolment, late)
            assert roster_workers.enrolment_outcome(e, time.time()) == "expired"
        # a person on the roster already, scanned for another worker: not linked twice
        second = enrol(fleet_db, config, "ka2", name="Someone else")
        wait_for(lambda: "ka2" in worker.enrolments.open, 10, "the ingest saw the enrolment")
        ka2.scan(PERSON)
        wait_for(lambda: state(fleet_db, second)[0] is not None, 20, "the enrolment closed")
        result, _closed, other_key, _via = state(fleet_db, second)
        assert result.startswith("duplicate") and other_key is None
        with fleet_db() as s:  # the scans themselves were stored as every scan is
            from fleet.models import Scan
            assert len(s.scalars(select(Scan)).all()) == 4
    finally:
        roster_reader.close()
        ka1.close()
        ka2.close()


def test_a_change_through_the_api_reaches_the_kiosks_topic_by_the_apps_publisher(
        fleet_config, make_broker, fleet_db, es256):
    """The web half of the path: the API commits, then hands the roster to the app's
    publisher, which sends it retained to each kiosk of the organisation."""
    from fleet.app import create_app
    from fleet.publisher import Publisher
    from tests.rosterkit import qr

    broker = make_broker(acl=acl_text("fleet"))  # the test's certificate: every fleet right
    config = ingest_config(fleet_config, broker)
    ids = seed(fleet_db, config, es256)
    publisher = Publisher(config, fleet_db).start()
    app = create_app(config, publisher=publisher)
    readers = {k: Subscriber(broker, [messages.roster_topic(k)], client_id=k,
                             persistent=False).start() for k in ("ka2", "kb1")}
    try:
        # connected and done with its start-up publication: what comes now is the notify
        wait_for(lambda: publisher.connected, 20, "the publisher connected")
        assert publisher.wait_idle(20)
        assert readers["ka2"].snapshot() == []
        answer = app.test_client().post("/api/v1/organisations/org-a/workers",
                                        headers=ids["token:manager-a"],
                                        json={"display_name": "An", "qr": qr(es256, AN)})
        assert answer.status_code == 201, answer.get_json()
        wait_for(lambda: readers["ka2"].snapshot(), 20, "the roster on ka2's topic")
        signer = bundles.load_signing_key(config)
        opened = bundle_format.open_bundle(readers["ka2"].snapshot()[-1].payload,
                                           signer.public_key(), "test")
        roster = roster_format.parse_roster(opened.body, opened.version)
        assert roster.member(identity_bytes(PERSON), None) and "ka2" in roster.kiosks
        # another organisation's kiosk gets nothing of org-a's roster
        time.sleep(0.5)
        assert readers["kb1"].snapshot() == []
    finally:
        for reader in readers.values():
            reader.close()
        publisher.stop()
        app.extensions["greengate"].engine.dispose()
