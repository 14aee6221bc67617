"""The ward officer's and the manager's scope, tested like the district officer's
(tests/test_api.py, tests/test_dashboard_pages.py): a ward officer of ward A gets nothing
of ward B, nor of a location of its district with no ward; a manager gets only its own
organisation's kiosks, and 403 on everything fleet-wide. Accounts need their anchor.
Real database (SQLite and PostgreSQL), the real app."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from fleet import accounts, auth, quarantine
from fleet.models import (AuditLog, District, Kiosk, Location, Organisation, Outage, Scan,
                          User, Ward)
from tests.fleetdata import HOUR, NOW

PASSWORD = "correct horse battery"
# ward A's location "la" (organisation X's), ward B's "lb" (organisation Y's), "ln" of the
# same district in no ward; one kiosk each, offline with an outage, and scans
SCANS = {"ka": 3, "kb": 5, "kn": 7}


def make_scan(n, kiosk, location, district):
    return Scan(kiosk_id=kiosk, scan_id=f"scan{n:08d}", ts=NOW - HOUR + n, received=NOW,
                decision="green", reason="ok", sub_reason=None, cert_type="v", cert_hash=None,
                holder=None, policy="p", location_id=location, district_id=district)


@pytest.fixture
def city(fleet_app, fleet_db):
    with fleet_db() as s:
        q1 = District(code="q1", name="Quận 1")
        s.add(q1)
        s.flush()
        wa = Ward(code="wa", name="Phường A", district_id=q1.id)
        wb = Ward(code="wb", name="Phường B", district_id=q1.id)
        s.add_all([wa, wb])
        s.flush()
        ox = Organisation(code="ox", name="Org X", kind="business", district_id=q1.id,
                          ward_id=wa.id, status="approved", status_since=NOW, created_at=NOW)
        oy = Organisation(code="oy", name="Org Y", kind="business", district_id=q1.id,
                          ward_id=wb.id, status="approved", status_since=NOW, created_at=NOW)
        s.add_all([ox, oy])
        s.flush()
        places = {"ka": Location(code="la", name="Place A", address="", district_id=q1.id,
                                 ward_id=wa.id, organisation_id=ox.id),
                  "kb": Location(code="lb", name="Place B", address="", district_id=q1.id,
                                 ward_id=wb.id, organisation_id=oy.id),
                  "kn": Location(code="ln", name="Place N", address="", district_id=q1.id)}
        s.add_all(places.values())
        s.flush()
        n = 0
        for kid, location in places.items():
            s.add(Kiosk(id=kid, location_id=location.id, deployment="test", policy="p",
                        state="offline", state_since=NOW - HOUR, detail="", last_seen=NOW - HOUR,
                        session=1, enrolled_at=NOW - 86400))
            s.add(Outage(kiosk_id=kid, started=NOW - HOUR, ended=None, cause="last will"))
            for _ in range(SCANS[kid]):
                n += 1
                s.add(make_scan(n, kid, location.id, q1.id))
        quarantine.insert(s.connection(), [quarantine.row(received=NOW, kiosk=kid, reason="bad")
                                           for kid in places])
        users = {"admin": auth.create_user(s, "admin", PASSWORD, "admin"),
                 "ward": auth.create_user(s, "ward", PASSWORD, "ward_officer", ward_id=wa.id),
                 "manager": auth.create_user(s, "manager", PASSWORD, "manager",
                                             organisation_id=ox.id)}
        s.flush()
        tokens = {name: {"Authorization": f"Bearer {auth.create_token(s, u, 't')}"}
                  for name, u in users.items()}
        s.commit()
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    return type("City", (), {"app": fleet_app, "sessions": fleet_db, "tokens": tokens,
                             "client": fleet_app.test_client()})


def get(city, url, who, status=200):
    response = city.client.get(url, headers=city.tokens[who])
    assert response.status_code == status, (url, who, response.status_code,
                                            response.get_data(as_text=True)[:300])
    return response.get_json()


def kiosk_ids(answer):
    return sorted(k["id"] for k in answer["items"])


# what each scoped caller sees of each endpoint: (url, extract, ward A's, manager X's)
API = [
    ("/api/v1/kiosks", kiosk_ids, ["ka"], ["ka"]),
    ("/api/v1/locations", lambda a: sorted(x["code"] for x in a["items"]), ["la"], None),
    ("/api/v1/districts", lambda a: [(d["code"], d["locations"], d["kiosks"]) for d in a["items"]],
     [("q1", 1, 1)], None),
    ("/api/v1/districts/q1", lambda a: (a["locations"], a["kiosks"]), (1, 1), None),
    ("/api/v1/scans?limit=1000", lambda a: sorted({i["kiosk"] for i in a["items"]}), ["ka"], None),
    ("/api/v1/stats/scans-per-hour", lambda a: a["totals"]["total"], SCANS["ka"], None),
    ("/api/v1/stats/overview", lambda a: (a["kiosks"]["total"], a["open_outages"]), (1, 1), None),
    ("/api/v1/presence", lambda a: a["total"], 1, None),
    ("/api/v1/outages", lambda a: sorted(o["kiosk"] for o in a["items"]), ["ka"], None),
    ("/api/v1/quarantine", lambda a: sorted(i["kiosk"] for i in a["items"]), ["ka"], None),
]


@pytest.mark.parametrize("url,extract,ward_sees,manager_sees", API, ids=[a[0] for a in API])
def test_api_keeps_a_ward_officer_to_its_ward_and_a_manager_to_its_organisation(
        city, url, extract, ward_sees, manager_sees):
    everything = extract(get(city, url, "admin"))
    assert everything != ward_sees  # the other ward and the ward-less place are there to hide
    assert extract(get(city, url, "ward")) == ward_sees
    if manager_sees is None:
        get(city, url, "manager", 403)  # fleet-wide: not the manager's
    else:
        assert extract(get(city, url, "manager")) == manager_sees


@pytest.mark.parametrize("url", ["/api/v1/kiosks/kb", "/api/v1/kiosks/kn",
                                 "/api/v1/locations/lb", "/api/v1/locations/ln"])
def test_the_other_ward_does_not_exist_for_a_ward_officer(city, url):
    get(city, url, "admin")
    get(city, url, "ward", 404)
    if "kiosks" in url:
        get(city, url, "manager", 404)
    for filtered in ("/api/v1/scans?location=lb", "/api/v1/kiosks?location=ln"):
        assert get(city, filtered, "ward", 403)["error"] == "forbidden"
    assert get(city, "/api/v1/kiosks/ka", "ward")["id"] == "ka"
    assert get(city, "/api/v1/kiosks/ka", "manager")["id"] == "ka"


def login(city, name):
    web = city.app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      web.get("/login").get_data(as_text=True)).group(1)
    response = web.post("/login", data={"csrf_token": token, "username": name,
                                        "password": PASSWORD})
    assert response.status_code == 302
    return web


@pytest.mark.parametrize("who", ["ward", "manager"])
def test_pages_keep_them_to_their_own(city, who):
    web = login(city, who)
    listing = web.get("/kiosks?lang=en").get_data(as_text=True)
    assert "ka" in re.findall(r'data-kiosk="([^"]+)"', listing) or "/kiosks/ka" in listing
    for other in ("kb", "kn"):
        assert f"/kiosks/{other}" not in listing
        assert web.get(f"/kiosks/{other}").status_code == 404
        assert web.get(f"/api/v1/kiosks/{other}").status_code == 404
    assert "Place B" not in listing and "Place N" not in listing  # not even as a filter choice
    assert web.get("/kiosks/ka").status_code == 200
    home = web.get("/?lang=en").get_data(as_text=True)
    assert "/kiosks/ka" in home and "/kiosks/kb" not in home and "/kiosks/kn" not in home
    live = web.get("/live/home").get_json()
    assert live["counts"]["offline"] == 1
    stats = web.get("/stats?lang=en")
    if who == "manager":
        assert stats.status_code == 403
        for path in ("/lists/status", "/policies", "/valuesets", "/lists/trust", "/audit",
                     "/trace", "/users"):
            assert web.get(path).status_code == 403, path
    else:
        totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', stats.get_data(as_text=True)))
        assert totals["total"] == str(SCANS["ka"])


@pytest.mark.parametrize("role,anchor", [("ward_officer", "ward_id"),
                                         ("manager", "organisation_id")])
def test_a_scoped_role_without_its_anchor_sees_nothing(city, role, anchor):
    with city.sessions() as s:
        user = auth.create_user(s, "lost", PASSWORD, role)
        s.flush()
        headers = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
        s.commit()
    for url in ("/api/v1/kiosks", "/api/v1/kiosks/ka"):
        response = city.client.get(url, headers=headers)
        assert response.status_code == 403 and "ask an admin" in response.get_json()["message"]


def test_accounts_need_their_anchor_and_changes_are_audited(city):
    with city.sessions() as s:
        refusals = [
            (dict(role="ward_officer"), "a ward officer needs a ward"),
            (dict(role="manager"), "a manager needs an organisation"),
            (dict(role="ward_officer", ward="nowhere"), "no ward with code 'nowhere'"),
            (dict(role="manager", organisation="nobody"), "no organisation with code 'nobody'"),
            (dict(role="operator", ward="wa"), "only a ward officer has a ward"),
            (dict(role="operator", organisation="ox"), "only a manager has an organisation"),
        ]
        for kwargs, message in refusals:
            role = kwargs.pop("role")
            with pytest.raises(accounts.AccountError) as caught:
                accounts.create_user(s, "admin", "someone", PASSWORD, role, **kwargs)
            assert str(caught.value.template % caught.value.params
                       if caught.value.params else caught.value.template).startswith(message)
        accounts.create_user(s, "admin", "wb-officer", PASSWORD, "ward_officer", ward="wb")
        accounts.update_user(s, "admin", "wb-officer", ward="wa")
        accounts.update_user(s, "admin", "wb-officer", "manager", organisation="oy")
        s.commit()
        user = s.scalar(select(User).where(User.username == "wb-officer"))
        assert (user.role, user.ward_id) == ("manager", None)
        assert accounts.user_dict(s, user)["organisation"] == "oy"
        entries = [(e.action, e.detail) for e in s.scalars(
            select(AuditLog).where(AuditLog.target == "wb-officer").order_by(AuditLog.id))]
    assert [a for a, _ in entries] == ["user.create", "user.update", "user.update"]
    assert entries[0][1]["ward"] == "wb"
    assert entries[1][1]["ward"] == ["wb", "wa"]
    assert entries[2][1]["organisation"] == [None, "oy"] and entries[2][1]["ward"] == ["wa", None]
    # the API takes the same fields
    response = city.client.post("/api/v1/users", headers=city.tokens["admin"], json={
        "username": "m2", "password": PASSWORD, "role": "manager", "organisation": "oy"})
    assert response.status_code == 201 and response.get_json()["organisation"] == "oy"
    response = city.client.post("/api/v1/users", headers=city.tokens["admin"], json={
        "username": "m3", "password": PASSWORD, "role": "manager"})
    assert response.status_code == 422


def test_cli_creates_and_moves_ward_officers_and_managers(database_url, tmp_path, monkeypatch,
                                                          capsys):
    import io
    import sys

    from fleet import migrate
    from fleet.cli import main
    from fleet.db import make_engine, make_sessions
    monkeypatch.setenv("GREENGATE_FLEET_DATABASE_URL", database_url)
    monkeypatch.setenv("GREENGATE_FLEET_DATA_DIR", str(tmp_path))
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    sessions = make_sessions(engine)
    with sessions() as s:
        q1 = District(code="q1", name="Quận 1")
        s.add(q1)
        s.flush()
        s.add_all([Ward(code="wa", name="A", district_id=q1.id),
                   Organisation(code="ox", name="X", kind="business", district_id=q1.id,
                                status="approved", status_since=NOW, created_at=NOW)])
        s.commit()

    def run(*argv):
        monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    try:
        status, _, err = run("user", "create", "w", "--role", "ward_officer", "--password-stdin")
        assert status == 2 and "a ward officer needs a ward" in err
        status, _, err = run("user", "create", "w", "--role", "ward_officer", "--ward", "zz",
                             "--password-stdin")
        assert status == 2 and "no ward with code 'zz'" in err
        assert run("user", "create", "w", "--role", "ward_officer", "--ward", "wa",
                   "--password-stdin")[0] == 0
        status, _, err = run("user", "create", "m", "--role", "manager", "--password-stdin")
        assert status == 2 and "a manager needs an organisation" in err
        assert run("user", "create", "m", "--role", "manager", "--organisation", "ox",
                   "--password-stdin")[0] == 0
        status, out, _ = run("user", "set", "w", "--role", "manager", "--organisation", "ox")
        assert status == 0 and "organisation ox" in out and "ward" not in out
        with sessions() as s:
            user = s.scalar(select(User).where(User.username == "w"))
            assert (user.role, user.ward_id, user.organisation_id is not None) == (
                "manager", None, True)
    finally:
        engine.dispose()
