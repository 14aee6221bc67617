"""Roster deltas over MQTT, self-healing (docs/rosters.md#transport): the fleet's
publisher and database, a real Mosquitto with the provisioning ACL, and the kiosk's own
BundleStore + Reporter + StatusFeed in this process (what `greengate-kiosk run` builds;
tests/test_roster_kiosk.py runs the whole process). Nothing is mocked.

- a change reaches a kiosk holding the previous roster as a roster-delta (stored beside
  its base), never as the full roster;
- a kiosk that missed two versions finds a delta that does not fit, takes the full roster
  once and goes back to the delta topic;
- an empty delta topic (cleared live by the fleet, or nothing retained in a connection)
  makes it take the full roster.
"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select

from device.feed import RETAINED_WAIT, StatusFeed
from device.outbox import Outbox
from device.reporter import Reporter
from device.state import BundleStore
from fleet import kiosks, organisations, rosters
from fleet.models import District, Kiosk, Location, Organisation, Worker
from greengate import bundle, keyset, messages, sealing
from provisioning.mosquitto_config import acl_text
from tests.broker import wait_until

PEOPLE = [("LE", "VAN<TAM", "1985-03-04"), ("PHAM", "THI<LAN", "1992-11-30"),
          ("TRAN", "CUONG", "1979-01-02"), ("NGUYEN", "AN", "2000-05-06")]


class InProcessKiosk:
    """The kiosk's bundle intake as `greengate-kiosk run` wires it, without the camera."""

    def __init__(self, tmp, broker, fleet, kid: str):
        from tests.drillkit import DEP
        self.dir = tmp / kid
        self.store = BundleStore(self.dir / "bundles", fleet.key.public_key(), DEP,
                                 "hcmc-2021", timedelta(hours=72), kiosk_id=kid)
        self.outbox = Outbox(self.dir / "outbox.sqlite", 100)
        self.reporter = Reporter(self.outbox, kid, "localhost", broker.port,
                                 tls=broker.client_tls(kid), backoff=(0.1, 0.5))
        self.feed = StatusFeed(self.store, self.reporter, DEP)
        self.feed.start()
        self.reporter.start()
        self.kid = kid

    def listening(self) -> set[str]:
        return {t for t in self.reporter.subscriptions() if t.startswith("gg/v1/roster/")}

    def version(self) -> int | None:
        return None if self.store.roster is None else self.store.roster.version

    def stored(self) -> list[str]:
        return sorted(p.name for p in (self.dir / "bundles").glob("roster*.bundle"))

    def close(self) -> None:
        self.reporter.stop()
        self.outbox.close()


def _setup(tmp_path, make_broker, es256):
    from tests.drillkit import DEP, Fleet

    broker = make_broker(acl=acl_text(None, {"fleet": "web"}))
    fleet = Fleet(tmp_path, broker, es256)
    with fleet.sessions() as s:
        district = District(code="q7", name="Quận 7")
        s.add(district)
        s.flush()
        acme = organisations.create(s, code="acme", name="ACME", kind="business",
                                    district=district, actor="t", at=1.0)
        bravo = organisations.create(s, code="bravo", name="BRAVO", kind="business",
                                     district=district, actor="t", at=1.0)
        s.flush()
        places = {}
        for code, org, only in (("acme-gate", acme, True), ("acme-office", acme, False),
                                ("bravo-shop", bravo, False)):
            places[code] = Location(code=code, name=code, district_id=district.id,
                                    organisation_id=org.id, workers_only=only)
            s.add(places[code])
        s.flush()
        for kid in ("rd-k1", "rd-k2"):
            kiosks.register(s, fleet.config, kiosk_id=kid, deployment=DEP, policy="hcmc-2021",
                            location=places["acme-gate"], actor="t", at=1.0)
        s.add(Worker(organisation_id=acme.id, display_name="Tám", created_at=1.0,
                     created_by="t", holder_key=rosters.holder_entry_hex(
                         fleet.config, "acme", PEOPLE[0])))
        rosters.placement_changed(s, fleet.config, ["rd-k1", "rd-k2"], actor="t")
        s.commit()
    fleet.start_publisher()
    return broker, fleet


def _add_worker(fleet, person) -> int:
    """A worker joins acme's roster, as fleet/roster_workers.py does it: the new version."""
    from tests.drillkit import DEP
    with fleet.sessions() as s:
        acme = s.scalar(select(Organisation).where(Organisation.code == "acme"))
        s.add(Worker(organisation_id=acme.id, display_name="x", created_at=1.0, created_by="t",
                     holder_key=rosters.holder_entry_hex(fleet.config, "acme", person)))
        s.flush()
        assert rosters.publish(s, fleet.config, acme, actor="t") == [DEP]
        s.commit()
        version = rosters.current(s, DEP)["rd-k1"][0]
    rosters.notify(fleet.publisher, [DEP])
    assert fleet.publisher.wait_idle(15)
    return version


def _move(fleet, kid: str, place: str) -> None:
    """The kiosk to another control point; the rosters of the organisation it joins and
    of the one it leaves (which no longer names it) re-issued."""
    with fleet.sessions() as s:
        kiosk = s.get(Kiosk, kid)
        left = s.get(Location, kiosk.location_id).organisation_id
        kiosk.location_id = s.scalar(select(Location.id).where(Location.code == place))
        policy, roster = rosters.placement_changed(s, fleet.config, [kid], actor="t")
        old = s.get(Organisation, left)
        if old.id != s.get(Location, kiosk.location_id).organisation_id:
            roster = sorted(set(roster) | set(rosters.publish(s, fleet.config, old, actor="t")))
        s.commit()
    rosters.hand_over(fleet.publisher, policy, roster)
    assert fleet.publisher.wait_idle(15)


def _member(k: InProcessKiosk, person) -> bool:
    return k.store.roster.member(sealing.identity_bytes(person))


def test_a_change_arrives_as_a_delta_and_a_kiosk_two_versions_behind_heals(
        tmp_path, make_broker, es256):
    from tests.drillkit import DEP

    broker, fleet = _setup(tmp_path, make_broker, es256)
    k = InProcessKiosk(tmp_path, broker, fleet, "rd-k1")
    try:
        # no roster yet: the full topic, then the delta topic only
        wait_until(lambda: k.version() is not None, 15, "the first roster")
        first = k.version()
        assert k.feed.roster_stats["full"] == 1 and _member(k, PEOPLE[0])
        wait_until(lambda: k.listening() == {messages.roster_delta_topic("rd-k1")}, 10,
                   "the delta topic alone")

        # a worker joins: a roster-delta, stored beside its base, not a full roster
        second = _add_worker(fleet, PEOPLE[1])
        wait_until(lambda: k.version() == second, 10, "the delta applied")
        assert _member(k, PEOPLE[1]) and _member(k, PEOPLE[0]) and not _member(k, PEOPLE[3])
        assert k.stored() == ["roster-delta-%d.bundle" % second, "roster.bundle"]
        base = bundle.open_bundle((k.dir / "bundles" / "roster.bundle").read_bytes(),
                                  fleet.key.public_key(), DEP)
        assert (base.kind, base.version) == ("roster", first)
        # the first roster had no previous one: nothing retained on the delta topic
        assert k.feed.roster_stats == {"full": 1, "delta": 1, "fallbacks": 0}
        assert k.listening() == {messages.roster_delta_topic("rd-k1")}
        # the delta carries the entry added, not the key nor the whole roster
        with fleet.sessions() as s:
            made = {kind: bundle.open_bundle(raw, fleet.key.public_key(), DEP)
                    for kind, raw in s.execute(
                        select(rosters.PublishedBundle.kind, rosters.PublishedBundle.raw).where(
                            rosters.PublishedBundle.version == second,
                            rosters.PublishedBundle.kind.like("roster%")))}
        assert set(made) == {"roster", "roster-delta"}
        delta = made["roster-delta"].body
        assert "key" not in delta and delta["from"] == first
        assert [len(keyset.decode(delta[name])) for name in (
            "add_holders", "remove_holders", "add_certs", "remove_certs")] == [1, 0, 0, 0]
        k.close()

        # two versions while it is away: the retained delta (from the one it missed) does
        # not fit; it takes the full roster once and returns to the delta topic
        _add_worker(fleet, PEOPLE[2])
        fourth = _add_worker(fleet, PEOPLE[3])
        k = InProcessKiosk(tmp_path, broker, fleet, "rd-k1")
        assert k.version() == second  # the stored base and delta replayed
        wait_until(lambda: k.version() == fourth, 15, "healed through the full roster")
        assert all(_member(k, p) for p in PEOPLE)
        assert k.feed.roster_stats["fallbacks"] == 1 and k.feed.roster_stats["full"] == 1
        assert k.stored() == ["roster.bundle"]  # the full roster replaced base and delta
        wait_until(lambda: k.listening() == {messages.roster_delta_topic("rd-k1")}, 10,
                   "back on the delta topic")
        assert k.store.refused == 0
    finally:
        k.close()
        fleet.close()


def test_an_empty_delta_topic_makes_the_kiosk_take_the_full_roster(tmp_path, make_broker,
                                                                    es256):
    broker, fleet = _setup(tmp_path, make_broker, es256)
    _move(fleet, "rd-k1", "acme-office")  # an ordinary kiosk of acme: no workers_only
    k = InProcessKiosk(tmp_path, broker, fleet, "rd-k1")
    try:
        wait_until(lambda: k.version() is not None and k.store.workers_only is None, 15,
                   "acme's roster")
        wait_until(lambda: k.listening() == {messages.roster_delta_topic("rd-k1")}, 10,
                   "the delta topic alone")
        assert k.store.roster.organisation == "acme"

        # moved to bravo, whose previous roster (none) did not name it: the fleet clears
        # its delta topic (live: an empty payload) and the kiosk takes bravo's full roster
        _move(fleet, "rd-k1", "bravo-shop")
        wait_until(lambda: k.store.roster.organisation == "bravo", 10, "bravo's roster")
        assert k.feed.roster_stats["fallbacks"] == 1
        wait_until(lambda: k.listening() == {messages.roster_delta_topic("rd-k1")}, 10,
                   "back on the delta topic")
        k.close()

        # moved back while away: acme's previous roster did not name it, so nothing is
        # retained on its delta topic; it holds bravo's (no workers_only: no other hint).
        # Without a retained delta for RETAINED_WAIT seconds of a connection, it reads the
        # full topic once.
        _move(fleet, "rd-k1", "acme-office")
        k = InProcessKiosk(tmp_path, broker, fleet, "rd-k1")
        wait_until(lambda: k.reporter.connected and k.listening() == {
            messages.roster_delta_topic("rd-k1")}, 10, "subscribed")
        t0 = time.monotonic()
        k.feed.tick(t0)
        time.sleep(1.0)  # a retained message would have come by now
        k.feed.tick(t0 + 1.0)
        assert k.store.roster.organisation == "bravo" and k.feed.roster_stats["delta"] == 0
        k.feed.tick(t0 + RETAINED_WAIT + 1)
        wait_until(lambda: k.store.roster.organisation == "acme", 10, "acme's roster again")
        assert k.feed.roster_stats["fallbacks"] == 1
        wait_until(lambda: k.listening() == {messages.roster_delta_topic("rd-k1")}, 10,
                   "back on the delta topic")
        k.feed.tick(t0 + 10 * RETAINED_WAIT)  # once per connection
        assert k.feed.roster_stats["fallbacks"] == 1
        assert k.store.refused == 0
    finally:
        k.close()
        fleet.close()


def test_a_long_chain_of_roster_deltas_is_replaced_by_the_full_roster(tmp_path):
    """Each stored delta is replayed at start-up: after MAX_CHAIN of them the feed asks for
    the full roster, and the full roster of the version reached through them replaces
    the chain (as a status snapshot does)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from device.feed import MAX_CHAIN
    from greengate import roster

    key = ec.generate_private_key(ec.SECP256R1())
    org_key = bytes(range(32))
    entries = [roster.holder_entry(org_key, p) for p in PEOPLE]

    def full(version, n):
        body = roster.roster_body("acme", ["k1"], org_key, entries[:n % len(entries) + 1])
        return bundle.seal("roster", version, 1_700_000_000, body, key, "dep")

    store = BundleStore(tmp_path, key.public_key(), "dep", "hcmc-2021", timedelta(hours=1),
                        kiosk_id="k1")
    feed = StatusFeed(store, None, "dep")
    assert store.offer(full(1, 0))[0]
    assert feed.wanted_roster() == {messages.roster_delta_topic("k1")}
    for version in range(2, MAX_CHAIN + 2):
        body = roster.delta_body(version - 1, "acme", ["k1"], add_holders=[entries[1]],
                                 remove_holders=[entries[1]] if version % 2 else [])
        assert store.offer(bundle.seal("roster-delta", version, 1_700_000_000, body, key,
                                       "dep")) == (True, "applied")
    top = MAX_CHAIN + 1
    assert store.roster_chain_length() == MAX_CHAIN and store.roster.version == top
    assert feed.wanted_roster() == {messages.roster_topic("k1")}
    # the fleet's full roster of that version (signed: it is what the chain made)
    whole = full(top, 1)
    assert store.offer(whole) == (True, "applied") and store.roster.version == top
    assert store.roster_chain_length() == 0 and feed.wanted_roster() == {
        messages.roster_delta_topic("k1")}
    assert store.roster.member(sealing.identity_bytes(PEOPLE[1]))
    # now it is the one held: the same bytes again are "already held", other bytes refused
    assert store.offer(whole) == (False, "already held")
    assert store.offer(full(top, 2))[1].startswith("refused")
    again = BundleStore(tmp_path, key.public_key(), "dep", "hcmc-2021", timedelta(hours=1),
                        kiosk_id="k1")
    assert again.roster.version == top and again.roster_chain_length() == 0
