"""A workers-only kiosk with its roster, end to end: a real `greengate-kiosk run` process,
a real Mosquitto (TLS, the ACL `greengate-provision mosquitto-config` writes), the
fleet's publisher and database. The roster reaches the kiosk retained on its own topic,
a change as a delta on its delta topic; another kiosk can neither read them nor forge
one. Nothing is mocked but the lights."""

from __future__ import annotations

import re
import time
from datetime import timedelta

from sqlalchemy import select

from fleet import kiosks, organisations, rosters
from fleet.models import District, Location, Organisation, Worker
from greengate import bundle, messages
from provisioning.mosquitto_config import acl_text
from tests.broker import Subscriber, wait_until

DECISION = re.compile(r"scan ([0-9a-f]{32}): (green|red) ([a-z_]+)(?:/([A-Za-z0-9_.-]+))?")
MEMBER = {"family": "Lê", "given": "Văn Tám", "dob": "1985-03-04"}
STRANGER = {"family": "Phạm", "given": "Thị Lan", "dob": "1992-11-30"}


def mint(issuer, who, *, expired=False):
    from tests.drillkit import now
    dcc = issuer.vaccination(date=(now() - timedelta(days=40)).date().isoformat(), dose=2,
                             of=2, **who)
    exp = now(-1) if expired else now(365)
    return issuer.mint(dcc, iat=now(-40), exp=exp)


def decide(kiosk, text, timeout=10.0):
    before = len(DECISION.findall(kiosk.log()))
    kiosk.present(text)
    wait_until(lambda: len(DECISION.findall(kiosk.log())) > before, timeout, "a decision")
    _, decision, reason, sub = DECISION.findall(kiosk.log())[before]
    return decision, reason, sub or None


def test_a_workers_only_kiosk_gets_its_roster_on_its_own_topic(tmp_path, make_broker, es256):
    from tests.drillkit import DEP, Fleet, KioskProc

    broker = make_broker(acl=acl_text(None, {"fleet": "web"}))
    fleet = Fleet(tmp_path, broker, es256)
    kiosk = KioskProc(tmp_path, broker, fleet.public_pem, "rk-k1", heartbeat=1.0)
    spy = None
    try:
        with fleet.sessions() as s:
            district = District(code="q7", name="Quận 7")
            s.add(district)
            s.flush()
            org = organisations.create(s, code="acme", name="ACME", kind="business",
                                       district=district, actor="t", at=1.0)
            bravo = organisations.create(s, code="bravo", name="BRAVO", kind="business",
                                         district=district, actor="t", at=1.0)
            s.flush()
            other_gate = Location(code="bravo-gate", name="Cổng", district_id=district.id,
                                  organisation_id=bravo.id, workers_only=True)
            s.add(other_gate)
            s.flush()
            kiosks.register(s, fleet.config, kiosk_id="rk-k3", deployment=DEP,
                            policy="hcmc-2021", location=other_gate, actor="t", at=1.0)
            gate = Location(code="acme-gate", name="Cổng", district_id=district.id,
                            organisation_id=org.id, workers_only=True)
            s.add(gate)
            s.flush()
            for kid in ("rk-k1", "rk-k2"):
                kiosks.register(s, fleet.config, kiosk_id=kid, deployment=DEP,
                                policy="hcmc-2021", location=gate, actor="t", at=1.0)
            s.add(Worker(organisation_id=org.id, display_name="Tám", created_at=1.0,
                         created_by="t", holder_key=rosters.holder_entry_hex(
                             fleet.config, "acme", ("LE", "VAN<TAM", "1985-03-04"))))
            rosters.placement_changed(s, fleet.config, ["rk-k1", "rk-k2", "rk-k3"], actor="t")
            s.commit()
        fleet.start_publisher()
        kiosk.start()
        kiosk.wait_ready()
        wait_until(lambda: "applied roster bundle" in kiosk.log(), 20, "the roster")

        member, stranger = mint(es256, MEMBER), mint(es256, STRANGER)
        assert decide(kiosk, member) == ("green", "ok", None)
        assert decide(kiosk, stranger) == ("red", "policy_failed", "not_on_roster")
        assert decide(kiosk, mint(es256, MEMBER, expired=True))[:2] == ("red", "expired")

        # the worker leaves the roster: the new version reaches the running kiosk, and
        # only acme's kiosks are sent anything (bravo's roster did not change)
        watch = Subscriber(broker, [messages.roster_topic("rk-k3")], client_id="fleet",
                           persistent=False).start()
        wait_until(lambda: len(watch.snapshot()) == 1, 10, "rk-k3's retained roster")
        with fleet.sessions() as s:
            for w in s.scalars(select(Worker)):
                w.removed_at = time.time()
            org = s.scalar(select(Organisation).where(Organisation.code == "acme"))
            assert rosters.publish(s, fleet.config, org, actor="t") == [DEP]
            s.commit()
            version = rosters.current(s, DEP)["rk-k1"][0]
        rosters.notify(fleet.publisher, [DEP])
        # as a delta on the roster it holds (its delta topic), not the full roster
        wait_until(lambda: f"applied roster-delta bundle v{version}" in kiosk.log(), 15,
                   "the new roster")
        assert f"applied roster bundle v{version}" not in kiosk.log()
        assert decide(kiosk, member) == ("red", "policy_failed", "not_on_roster")
        time.sleep(0.5)
        assert len(watch.snapshot()) == 1
        watch.close()

        # another kiosk (its own certificate, the ACL's %u) reads no one else's roster ...
        spy = Subscriber(broker, [messages.roster_topic("rk-k1"),
                                  messages.roster_delta_topic("rk-k1"), "gg/v1/roster/#"],
                         client_id="rk-k2", persistent=False).start()
        wait_until(lambda: spy.connects >= 1, 10, "the spy connected")
        # ... but its own (retained): the subscription itself works
        own = {messages.roster_topic("rk-k2"), messages.roster_delta_topic("rk-k2")}
        wait_until(lambda: {m.topic for m in spy.snapshot()} == own, 10, "rk-k2's own roster")
        # nor forges one for rk-k1 (the broker drops it; the kiosk would refuse it anyway)
        for topic in (messages.roster_topic("rk-k1"), messages.roster_delta_topic("rk-k1")):
            spy.client.publish(topic, b"forged", qos=1, retain=True).wait_for_publish(5)
        time.sleep(1.0)
        assert {m.topic for m in spy.snapshot()} == own
        reader = Subscriber(broker, [messages.roster_topic("rk-k1"),
                                     messages.roster_delta_topic("rk-k1")], client_id="fleet",
                            persistent=False).start()
        try:
            wait_until(lambda: len(reader.snapshot()) == 2, 10, "the retained roster")
            held = {m.topic: bundle.open_bundle(m.payload, fleet.key.public_key(), DEP)
                    for m in reader.snapshot()}
            assert {(b.kind, b.version) for b in held.values()} == {
                ("roster", version), ("roster-delta", version)}
        finally:
            reader.close()
        assert "refused bundle" not in kiosk.log()
        assert kiosk.stop() == 0, kiosk.log()

        # no roster at all (the broker lost it, the card's copy is gone): never green
        clear = Subscriber(broker, [messages.roster_topic("rk-k1")], client_id="fleet",
                           persistent=False).start()
        try:
            wait_until(lambda: clear.connects >= 1, 10, "connected")
            clear.client.publish(messages.roster_topic("rk-k1"), b"", qos=1,
                                 retain=True).wait_for_publish(5)
        finally:
            clear.close()
        stored = list(kiosk.data.rglob("roster.bundle"))
        assert stored
        for path in stored:
            path.unlink()
        kiosk.start()
        kiosk.wait_ready()
        wait_until(lambda: "fault lists: workers only: no roster of acme" in
                   kiosk.log().split("=== run 2")[1], 15, "the roster fault")
        assert decide(kiosk, member) == ("red", "policy_failed", "roster_missing")
        assert decide(kiosk, stranger) == ("red", "policy_failed", "roster_missing")
        assert kiosk.stop() == 0, kiosk.log()
    finally:
        if spy is not None:
            spy.close()
        kiosk.close()
        fleet.close()
