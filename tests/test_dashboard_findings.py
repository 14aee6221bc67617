"""Dashboard findings of issue 15, each with the part that made it:

* a kiosk that has just connected: its lists reach the fleet within seconds (the kiosk
  sends a heartbeat when a bundle arrives, the tracker writes it at once), and until a
  heartbeat is recorded the kiosk's page and the home page say the same ("not reported
  yet"), and "Last heartbeat" does not show the time it was merely heard;
* the alerts page says what the *dispatcher* did with e-mail, not what the web
  process's own configuration says.

Real Mosquitto and a real kiosk process for the first (tests/test_kiosk_e2e.py's site);
the fleet's app through Flask's test client on SQLite and PostgreSQL for the others.
"""

from __future__ import annotations

import re
import signal
import time

from greengate import messages

from fleet import auth
from fleet.app import create_app
from fleet.config import load
from fleet.models import (AlertDelivery, AlertEpisode, AlertRule, District, Kiosk, Location,
                          PublishedBundle)
from tests.fleetdata import NOW
from tests.test_i18n import visible
from tests.test_kiosk_e2e import KIOSK, finish, mint, site  # noqa: F401  (site: a fixture)

PASSWORD = "correct horse battery"


def test_a_kiosks_lists_reach_the_fleet_within_seconds_of_connecting(site, subscriber):  # noqa: F811
    """Heartbeats every 60 s. The first goes out on connecting, before any bundle is
    applied (here the lists are published only after it); the heartbeat that first holds
    them must not wait for the next interval: it goes out when they arrive."""
    good, _ = mint(site.issuer)
    site.frame("1-good", good)
    sub = subscriber(site.broker, messages.heartbeat_topic(KIOSK))

    def held(msgs):
        return [messages.parse_heartbeat(x.payload, KIOSK)["bundles"] for x in msgs]

    proc = site.kiosk(site.config(heartbeat=60.0), "kiosk.log", "--keep-running")
    try:
        first = held(sub.wait_for(lambda m: len(m) >= 1, 30, "the first heartbeat"))
        assert first[0]["trust"] is None
        site.publish_lists()
        published = time.monotonic()
        msgs = sub.wait_for(lambda m: any(b["trust"] == 1 for b in held(m)), 20,
                            "a heartbeat holding the lists")
        assert time.monotonic() - published < 20  # not the 60 s interval
        assert held(msgs)[-1] == {"trust": 1, "policy": 1, "status": 1, "valuesets": None}
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc, 20)


def _login(app, name="lan"):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post("/login", data={"csrf_token": token, "username": name,
                                       "password": PASSWORD}).status_code == 302
    return client


def _fleet(fleet_app, fleet_db):
    with fleet_db() as s:
        d = District(code="q1", name="Quận 1")
        s.add(d)
        s.flush()
        loc = Location(code="q1-market", name="Chợ Bến Thành", address="", district_id=d.id)
        s.add(loc)
        s.flush()
        # connected a moment ago, no heartbeat recorded yet; then its will: an outage
        s.add(Kiosk(id="fresh", location_id=loc.id, deployment="test", policy="hcmc-2021",
                    state="offline", state_since=NOW - 30, detail="connection lost",
                    session=2, last_seen=NOW - 30, heartbeat=None, enrolled_at=NOW - 86400))
        for kind, version in (("trust", 5), ("policy", 2), ("status", 12)):
            s.add(PublishedBundle(deployment="test", kind=kind, version=version, base=None,
                                  issued_at=int(NOW - 600), raw=b"x", etag="e"))
        auth.create_user(s, "lan", PASSWORD, "admin")
        s.commit()
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW


def test_before_its_first_heartbeat_home_and_kiosk_page_agree(fleet_app, fleet_db):
    _fleet(fleet_app, fleet_db)
    web = _login(fleet_app)
    home = web.get("/?lang=en").get_data(as_text=True)
    row = re.search(r'<tr class="outage" data-kiosk="fresh">(.*?)</tr>', home, re.S).group(1)
    cells = dict(re.findall(r'data-label="([^"]+)">(.*?)</td>', row, re.S))
    assert visible(cells["Bundles behind"]).strip() == "not reported yet"
    # not the time it was heard: no heartbeat is recorded
    assert visible(cells["Last heartbeat"]).strip() == "none yet"
    page = web.get("/kiosks/fresh?lang=en").get_data(as_text=True)
    summary = re.search(r'id="bundles-summary">(.*?)</span>\s*</h2>', page, re.S).group(1)
    assert visible(summary).strip() == "not reported yet"
    bundles = re.search(r'id="bundles".*?</section>', page, re.S).group(0)
    assert "missing" not in visible(bundles) and visible(bundles).count("not reported yet") == 4
    assert "No heartbeat of this connection yet (last heard 05/10 14:59)." in visible(page)
    listed = web.get("/kiosks?lang=en").get_data(as_text=True)
    row = re.search(r'data-kiosk="fresh".*?</tr>', listed, re.S).group(0)
    assert "none yet" in visible(row) and "not reported yet" in visible(row)

    # its heartbeat arrives: both show the same numbers
    with fleet_db() as s:
        kiosk = s.get(Kiosk, "fresh")
        kiosk.heartbeat = {"v": 1, "session": 2, "ts": NOW - 5, "uptime": 1.0, "outbox": 0,
                           "bundles": {"trust": 4, "policy": 2, "status": None},
                           "clock": "synced", "lists": "fresh"}
        s.commit()
    home = web.get("/?lang=en").get_data(as_text=True)
    row = re.search(r'<tr class="outage" data-kiosk="fresh">(.*?)</tr>', home, re.S).group(1)
    cells = dict(re.findall(r'data-label="([^"]+)">(.*?)</td>', row, re.S))
    page = web.get("/kiosks/fresh?lang=en").get_data(as_text=True)
    summary = re.search(r'id="bundles-summary">(.*?)</span>\s*</h2>', page, re.S).group(1)
    assert visible(cells["Bundles behind"]).strip() == visible(summary).strip() == \
        "missing: status list"
    assert "05/10 14:59" in visible(cells["Last heartbeat"])


def _alerts(fleet_app, fleet_db, deliveries):
    with fleet_db() as s:
        rule = AlertRule(name="Trực ban", kind="kiosk_offline", district_id=None,
                         threshold=None, webhook_url="https://hooks.example/x",
                         emails="ops@example.org", enabled=True, created_by="lan",
                         created_at=NOW - 7200, updated_by="lan", updated_at=NOW - 7200)
        s.add(rule)
        s.flush()
        episode = AlertEpisode(rule_id=rule.id, kiosk_id="q1-a", district_id=None,
                               outage_id=1, started=NOW - 900, alerted_at=NOW - 600,
                               ended_at=None, resolution=None)
        s.add(episode)
        s.flush()
        for channel, target in deliveries:
            s.add(AlertDelivery(episode_id=episode.id, event="alert", channel=channel,
                                target=target, payload={"text": "q1-a", "at": "x"},
                                created_at=NOW - 600, status="sent", attempts=1,
                                next_at=None, sent_at=NOW - 599, last_error=""))
        auth.create_user(s, "lan", PASSWORD, "admin")
        s.commit()
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    return _login(fleet_app).get("/alerts?lang=en").get_data(as_text=True)


def test_alerts_page_says_the_dispatcher_sends_no_email(fleet_config, fleet_db):
    """The web process's own file names a mail server, but the dispatcher made only the
    webhook for a rule naming an address: its own file has none."""
    config = load(None, env={}, fleet={"data_dir": str(fleet_config.data_dir),
                                       "database_url": fleet_config.database_url,
                                       "deployments": ["test"]},
                  alerts={"smtp_host": "mail.example.org"})
    app = create_app(config)
    try:
        html = _alerts(app, fleet_db, [("webhook", "https://hooks.example/x")])
    finally:
        app.extensions["greengate"].engine.dispose()
    text = visible(html)
    assert "The alert dispatcher's e-mail is off: its alert of 05/10 14:50 for rule " \
           "“Trực ban” named addresses, but it made no e-mail." in text
    assert "This web server's own file names the mail server ." in text  # <code> left out
    assert "the mail server <code>mail.example.org</code>." in html


def test_alerts_page_says_the_dispatcher_sends_email(fleet_app, fleet_db):
    """The web process's file has no mail server; the dispatcher's has (it e-mailed)."""
    text = visible(_alerts(fleet_app, fleet_db, [("webhook", "https://hooks.example/x"),
                                                 ("email", "ops@example.org")]))
    assert "The alert dispatcher sends e-mail: its newest message was made 05/10 14:50 " \
           "(sent)." in text
    assert "This web server's own file has no mail server." in text


def test_alerts_page_before_any_alert(fleet_app, fleet_db):
    with fleet_db() as s:
        auth.create_user(s, "lan", PASSWORD, "admin")
        s.commit()
    text = visible(_login(fleet_app).get("/alerts?lang=en").get_data(as_text=True))
    assert "No alert has shown yet whether the alert dispatcher sends e-mail." in text
