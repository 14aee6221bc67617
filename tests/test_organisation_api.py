"""/api/v1/organisations and /api/v1/wards (fleet/api/organisations.py) and the `ward` and
`organisation` of a location, on SQLite and PostgreSQL with the real app: create, list,
filter, page, change the status along its path, who may do what, and the scope of every
role (a district officer its district, a ward officer its ward, a manager its own
organisation, read only; anything outside is a 404)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fleet import auth, bundles, compliance
from fleet.models import (AuditLog, District, Kiosk, Location, Organisation,
                          OrganisationStatusChange, PublishedBundle, Ward, Worker)

PASSWORD = "correct horse battery"
NOW = 1_633_420_800.0  # 2021-10-05T08:00:00Z


@pytest.fixture
def city(fleet_app, fleet_db, fleet_config):
    """Quận 7 (wards tan-phong and tan-quy) and Quận 1 (ben-nghe); organisations an-phat
    (tan-phong, a control point with a kiosk), binh-minh (tan-quy) and sai-gon (q1); one
    account per role, the district officer of q7, the ward officer of tan-phong, the
    manager of an-phat."""
    with fleet_db() as s:
        q7, q1 = District(code="q7", name="Quận 7"), District(code="q1", name="Quận 1")
        s.add_all([q7, q1])
        s.flush()
        wards = {code: Ward(code=code, name=name, district_id=d.id) for code, name, d in (
            ("tan-phong", "Tân Phong", q7), ("tan-quy", "Tân Quy", q7),
            ("ben-nghe", "Bến Nghé", q1))}
        s.add_all(wards.values())
        s.flush()
        orgs = {}
        for code, name, kind, district, ward in (
                ("an-phat", "Công ty An Phát", "business", q7, "tan-phong"),
                ("binh-minh", "Hộ kinh doanh Bình Minh", "household", q7, "tan-quy"),
                ("sai-gon", "HTX Sài Gòn", "cooperative", q1, "ben-nghe")):
            orgs[code] = Organisation(code=code, name=name, kind=kind, district_id=district.id,
                                      ward_id=wards[ward].id, status="applied",
                                      status_since=NOW - 86400, suspended_reason="",
                                      created_at=NOW - 86400)
        s.add_all(orgs.values())
        s.flush()
        for org in orgs.values():
            s.add(OrganisationStatusChange(organisation_id=org.id, at=NOW - 86400,
                                           old_status=None, new_status="applied",
                                           actor="seed", reason=""))
        gate = Location(code="an-phat-gate", name="Cổng An Phát", address="", district_id=q7.id,
                        ward_id=wards["tan-phong"].id, organisation_id=orgs["an-phat"].id)
        s.add(gate)
        s.flush()
        s.add(Kiosk(id="k-gate", location_id=gate.id, deployment="test", policy="hcmc-2021",
                    state="online", state_since=NOW, detail="", last_seen=NOW, session=1,
                    enrolled_at=NOW - 86400))
        s.add_all([Worker(organisation_id=orgs["an-phat"].id, display_name=f"W{i}", job="",
                          created_at=NOW, created_by="seed",
                          removed_at=NOW if i == 0 else None) for i in range(3)])
        accounts = {"admin": ("admin", {}), "operator": ("operator", {}),
                    "officer": ("district_officer", {"district_id": q7.id}),
                    "officer1": ("district_officer", {"district_id": q1.id}),
                    "ward": ("ward_officer", {"ward_id": wards["tan-phong"].id}),
                    "ward2": ("ward_officer", {"ward_id": wards["tan-quy"].id}),
                    "manager": ("manager", {"organisation_id": orgs["an-phat"].id}),
                    "health": ("health_official", {})}
        tokens = {}
        for name, (role, anchors) in accounts.items():
            district_id = anchors.pop("district_id", None)
            user = auth.create_user(s, name, PASSWORD, role, district_id, **anchors)
            s.flush()
            tokens[name] = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
        s.commit()
    bundles.ensure_signing_key(fleet_config)  # a suspension re-signs the policy bundle
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    return type("City", (), {"client": fleet_app.test_client(), "tokens": tokens,
                             "sessions": fleet_db})


def call(city, method, url, who="admin", body=None, status=200):
    response = city.client.open(url, method=method, headers=city.tokens[who], json=body)
    assert response.status_code == status, (method, url, who, response.status_code,
                                            response.get_data(as_text=True)[:400])
    return response.get_json()


def codes(answer):
    return sorted(item["code"] for item in answer["items"])


# --- wards -----------------------------------------------------------------------------------
def test_wards_are_created_listed_and_scoped(city):
    made = call(city, "POST", "/api/v1/wards", "officer",
                {"code": "tan-hung", "name": "Tân Hưng", "kind": "phuong"}, 201)
    assert (made["district"]["code"], made["kind"], made["locations"]) == ("q7", "phuong", 0)
    call(city, "POST", "/api/v1/wards", "officer",
         {"code": "da-kao", "name": "Đa Kao", "district": "q1"}, 404)  # not its district
    assert call(city, "POST", "/api/v1/wards", "admin", {"code": "x", "name": "X"}, status=422)[
        "message"] == "'district' is required"
    assert call(city, "POST", "/api/v1/wards", "admin",
                {"code": "x", "name": "X", "district": "q1", "kind": "town"}, 422)["message"] \
        .startswith("a ward's kind is one of")
    assert call(city, "POST", "/api/v1/wards", "admin",
                {"code": "tan-quy", "name": "X", "district": "q7"}, 409)["error"] == "conflict"
    for who in ("ward", "manager", "health"):
        call(city, "POST", "/api/v1/wards", who, {"code": "y", "name": "Y"}, 403)

    assert codes(call(city, "GET", "/api/v1/wards")) == ["ben-nghe", "tan-hung", "tan-phong",
                                                           "tan-quy"]
    assert codes(call(city, "GET", "/api/v1/wards?district=q1")) == ["ben-nghe"]
    assert codes(call(city, "GET", "/api/v1/wards", "officer")) == ["tan-hung", "tan-phong",
                                                                      "tan-quy"]
    call(city, "GET", "/api/v1/wards?district=q1", "officer", status=403)
    assert codes(call(city, "GET", "/api/v1/wards", "ward")) == ["tan-phong"]
    call(city, "GET", "/api/v1/wards", "manager", status=403)
    ward = call(city, "GET", "/api/v1/wards/tan-phong", "ward")
    assert (ward["locations"], ward["organisations"]) == (1, 1)
    call(city, "GET", "/api/v1/wards/tan-quy", "ward", status=404)
    call(city, "GET", "/api/v1/wards/ben-nghe", "officer", status=404)

    renamed = call(city, "PATCH", "/api/v1/wards/tan-hung", "officer",
                   {"name": "Phường Tân Hưng", "kind": "xa"})
    assert (renamed["name"], renamed["kind"]) == ("Phường Tân Hưng", "xa")
    call(city, "PATCH", "/api/v1/wards/ben-nghe", "officer", {"name": "Z"}, 404)
    with city.sessions() as s:
        actions = [(a.action, a.actor, a.target) for a in s.scalars(
            select(AuditLog).where(AuditLog.action.like("ward.%")).order_by(AuditLog.id))]
    assert actions == [("ward.create", "officer", "tan-hung"), ("ward.update", "officer",
                                                               "tan-hung")]


# --- organisations: create, change, list -------------------------------------------------------
def test_create_and_change_an_organisation(city):
    made = call(city, "POST", "/api/v1/organisations", "officer",
                {"code": "dong-a", "name": "Công ty Đông Á", "kind": "business",
                 "ward": "tan-quy", "tax_code": "0312345678", "sector": "dệt may",
                 "contact_name": "Chị Lan", "contact_phone": "0901234567"}, 201)
    assert (made["status"], made["district"]["code"], made["ward"]["code"], made["sticker"]) == (
        "applied", "q7", "tan-quy", None)
    assert made["contact"] == {"name": "Chị Lan", "phone": "0901234567", "email": ""}
    assert [h["new"] for h in made["history"]] == ["applied"]
    assert made["roster"] == {"size": 0, "quota": None, "room": None}
    refusals = [
        ({"code": "x1", "name": "X", "kind": "business", "tax_code": "12345"}, 422,
         "is not a Vietnamese tax code"),
        ({"code": "x2", "name": "X", "kind": "shop"}, 422, "an organisation's kind is one of"),
        ({"code": "x3", "name": "X", "kind": "business", "ward": "ben-nghe"}, 422,
         "no ward with code 'ben-nghe'"),  # another district's ward does not exist for them
        ({"code": "dong-a", "name": "X", "kind": "business"}, 409, "exists already"),
        ({"code": "x4", "name": "X", "kind": "business", "tax_code": "0312345678"}, 409,
         "tax code 0312345678 exists already"),
        ({"code": "x5", "name": "X", "kind": "business", "status": "approved"}, 422,
         "unknown field status"),
        ({"code": "X 6", "name": "X", "kind": "business"}, 422, "organisation code is"),
    ]
    for body, status, message in refusals:
        assert message in call(city, "POST", "/api/v1/organisations", "officer", body,
                               status)["message"], body
    assert call(city, "POST", "/api/v1/organisations", "admin",
                {"code": "x7", "name": "X", "kind": "business", "district": "q1",
                 "ward": "tan-quy"}, 422)["message"] == "ward 'tan-quy' is in another district"
    for who in ("ward", "manager", "health"):
        call(city, "POST", "/api/v1/organisations", who,
             {"code": "x8", "name": "X", "kind": "business"}, 403)
    call(city, "POST", "/api/v1/organisations", "officer1",
         {"code": "x9", "name": "X", "kind": "business", "district": "q7"}, 404)

    changed = call(city, "PATCH", "/api/v1/organisations/dong-a", "officer",
                   {"name": "Công ty TNHH Đông Á", "ward": "tan-phong", "tax_code": None,
                    "contact_email": "lan@dong-a.example"})
    assert (changed["name"], changed["ward"]["code"], changed["tax_code"],
            changed["contact"]["email"]) == ("Công ty TNHH Đông Á", "tan-phong", None,
                                             "lan@dong-a.example")
    call(city, "PATCH", "/api/v1/organisations/dong-a", "officer", {"district": "q1"}, 422)
    call(city, "PATCH", "/api/v1/organisations/dong-a", "officer", {"name": ""}, 422)
    call(city, "PATCH", "/api/v1/organisations/dong-a", "officer1", {"name": "Z"}, 404)
    call(city, "PATCH", "/api/v1/organisations/an-phat", "manager", {"name": "Z"}, 403)
    with city.sessions() as s:
        (update,) = s.scalars(select(AuditLog).where(AuditLog.action == "organisation.update"))
    assert update.detail == {"name": ["Công ty Đông Á", "Công ty TNHH Đông Á"],
                             "ward": ["tan-quy", "tan-phong"], "tax_code": ["0312345678", None],
                             "contact_email": ["", "lan@dong-a.example"]}


def test_list_filters_counts_and_pages(city):
    call(city, "POST", "/api/v1/organisations/an-phat/status", "officer",
         {"status": "approved", "quota": 30})
    answer = call(city, "GET", "/api/v1/organisations")
    assert codes(answer) == ["an-phat", "binh-minh", "sai-gon"]
    assert answer["counts"] == {"applied": 2, "approved": 1, "suspended": 0, "closed": 0}
    # newest first
    assert [i["code"] for i in answer["items"]] == ["sai-gon", "binh-minh", "an-phat"]
    assert codes(call(city, "GET", "/api/v1/organisations?district=q7")) == ["an-phat",
                                                                             "binh-minh"]
    assert codes(call(city, "GET", "/api/v1/organisations?ward=tan-quy")) == ["binh-minh"]
    filtered = call(city, "GET", "/api/v1/organisations?status=applied")
    assert codes(filtered) == ["binh-minh", "sai-gon"]
    assert filtered["counts"]["approved"] == 1  # the counts ignore the status filter
    assert codes(call(city, "GET", "/api/v1/organisations?status=approved,applied&district=q1")
                 ) == ["sai-gon"]
    assert codes(call(city, "GET", "/api/v1/organisations?q=b%C3%ACnh")) == ["binh-minh"]
    assert codes(call(city, "GET", "/api/v1/organisations?q=SAI")) == ["sai-gon"]
    assert codes(call(city, "GET", "/api/v1/organisations?q=100%25")) == []  # % is literal
    call(city, "GET", "/api/v1/organisations?status=open", status=400)
    call(city, "GET", "/api/v1/organisations?ward=nowhere", status=404)
    seen, after = [], None
    while True:
        page = call(city, "GET", "/api/v1/organisations?limit=2"
                    + (f"&after={after}" if after else ""))
        seen += [i["code"] for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ["sai-gon", "binh-minh", "an-phat"]

    # the scope of each role: nothing outside it, not even in the counts
    assert codes(call(city, "GET", "/api/v1/organisations", "officer")) == ["an-phat",
                                                                           "binh-minh"]
    call(city, "GET", "/api/v1/organisations?district=q1", "officer", status=403)
    scoped = call(city, "GET", "/api/v1/organisations", "ward")
    assert codes(scoped) == ["an-phat"] and sum(scoped["counts"].values()) == 1
    call(city, "GET", "/api/v1/organisations?ward=tan-quy", "ward", status=403)
    assert codes(call(city, "GET", "/api/v1/organisations", "manager")) == ["an-phat"]
    assert codes(call(city, "GET", "/api/v1/organisations", "health")) == [
        "an-phat", "binh-minh", "sai-gon"]


@pytest.mark.parametrize("who,visible", [
    ("admin", {"an-phat", "binh-minh", "sai-gon"}), ("health", {"an-phat", "binh-minh", "sai-gon"}),
    ("operator", {"an-phat", "binh-minh", "sai-gon"}), ("officer", {"an-phat", "binh-minh"}),
    ("officer1", {"sai-gon"}), ("ward", {"an-phat"}), ("ward2", {"binh-minh"}),
    ("manager", {"an-phat"})])
def test_an_organisation_outside_the_scope_does_not_exist(city, who, visible):
    for code in ("an-phat", "binh-minh", "sai-gon"):
        expected = 200 if code in visible else 404
        call(city, "GET", f"/api/v1/organisations/{code}", who, status=expected)
        if code not in visible:
            assert call(city, "POST", f"/api/v1/organisations/{code}/status", who,
                        {"status": "closed", "reason": "x"},
                        404 if who != "manager" else 403)["error"] in ("not_found", "forbidden")


def test_detail_shows_places_kiosks_roster_and_reminders(city):
    with city.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        for n in range(4):
            compliance.remind(s, org, actor="ward", note=f"lần {n + 1}", at=NOW + n)
        s.commit()
    detail = call(city, "GET", "/api/v1/organisations/an-phat", "manager")
    assert detail["locations"] == [{"code": "an-phat-gate", "name": "Cổng An Phát",
                                    "address": "", "ward": {"code": "tan-phong",
                                                            "name": "Tân Phong"}, "kiosks": 1,
                                     "workers_only": False}]
    assert [(k["id"], k["location"], k["state"]) for k in detail["kiosks"]] == [
        ("k-gate", "an-phat-gate", "online")]
    assert detail["roster"] == {"size": 2, "quota": None, "room": None}  # one was removed
    assert detail["reminders"] == {"count": 4, "flagged": True, "flag_after": 3}
    assert call(city, "GET", "/api/v1/organisations/binh-minh")["reminders"]["flagged"] is False


# --- the status path ----------------------------------------------------------------------------
def status(city, code, who, body, expected=200):
    return call(city, "POST", f"/api/v1/organisations/{code}/status", who, body, expected)


def policy_versions(city) -> int:
    with city.sessions() as s:
        return len(s.scalars(select(PublishedBundle).where(
            PublishedBundle.kind == "policy", PublishedBundle.deployment == "test")).all())


def test_the_status_path_by_role(city):
    assert policy_versions(city) == 0
    assert "quota" in status(city, "an-phat", "officer", {"status": "approved"}, 422)["message"]
    status(city, "an-phat", "officer", {"status": "approved", "quota": True}, 422)
    status(city, "an-phat", "officer", {"status": "approved", "quota": "30"}, 422)
    status(city, "an-phat", "officer", {"status": "open"}, 422)
    status(city, "an-phat", "officer", {"status": "approved", "quota": 30, "x": 1}, 422)
    for who in ("ward", "health"):  # approving is the district's
        assert status(city, "an-phat", who, {"status": "approved", "quota": 30},
                      403)["error"] == "forbidden"
    status(city, "an-phat", "manager", {"status": "approved", "quota": 30}, 403)
    approved = status(city, "an-phat", "officer", {"status": "approved", "quota": 30,
                                                   "reason": "đủ điều kiện"})
    assert (approved["status"], approved["quota"], approved["approved_at"],
            approved["sticker"]) == ("approved", 30, "2021-10-05T08:00:00.000Z",
                                     "Doanh nghiệp xanh")
    assert approved["change"] == {"at": "2021-10-05T08:00:00.000Z", "old": "applied",
                                  "new": "approved", "by": "officer",
                                  "reason": "đủ điều kiện",
                                  "detail": {"quota": 30}}
    assert approved["published"] == "nothing changed"  # its kiosks were not closed
    assert approved["roster"]["room"] == 28
    status(city, "an-phat", "officer", {"status": "approved", "quota": 31}, 409)

    assert "needs its reason" in status(city, "an-phat", "health",
                                        {"status": "suspended"}, 422)["message"]
    suspended = status(city, "an-phat", "health",
                       {"status": "suspended", "reason": "F0 ngày 05/10",
                        "lift_by": "ward_officer"})
    assert (suspended["status"], suspended["suspended_reason"], suspended["lift_by"],
            suspended["sticker"]) == ("suspended", "F0 ngày 05/10", "ward_officer", None)
    # its kiosk's policy bundle was signed anew (no MQTT here: kiosks fetch it over HTTP)
    assert suspended["published"] == "not configured (kiosks get it over HTTP)"
    assert policy_versions(city) == 1
    # only the role the suspension names lifts it (or an admin); another ward's officer
    # does not even see it
    assert status(city, "an-phat", "officer", {"status": "approved"}, 403)["message"] == \
        "this suspension is lifted by a ward_officer"
    status(city, "an-phat", "ward2", {"status": "approved"}, 404)
    lifted = status(city, "an-phat", "ward", {"status": "approved", "reason": "đã khử khuẩn"})
    assert (lifted["status"], lifted["quota"], lifted["lift_by"]) == ("approved", 30, None)
    assert policy_versions(city) == 2
    # a ward officer suspends in its ward; the district closes
    status(city, "an-phat", "ward", {"status": "suspended", "reason": "không quét"})
    status(city, "an-phat", "ward", {"status": "closed", "reason": "x"}, 403)
    closed = status(city, "an-phat", "officer", {"status": "closed", "reason": "giải thể"})
    assert closed["status"] == "closed"
    status(city, "an-phat", "admin", {"status": "approved", "quota": 1}, 409)
    assert [(h["old"], h["new"], h["by"]) for h in closed["history"]] == [
        (None, "applied", "seed"), ("applied", "approved", "officer"),
        ("approved", "suspended", "health"), ("suspended", "approved", "ward"),
        ("approved", "suspended", "ward"), ("suspended", "closed", "officer")]
    with city.sessions() as s:
        audited = [(a.actor, a.detail["new"]) for a in s.scalars(
            select(AuditLog).where(AuditLog.action == "organisation.status")
            .order_by(AuditLog.id))]
    assert audited == [("officer", "approved"), ("health", "suspended"), ("ward", "approved"),
                       ("ward", "suspended"), ("officer", "closed")]


# --- a location's ward and organisation ----------------------------------------------------
def test_a_location_takes_a_ward_and_an_organisation_of_its_district(city):
    made = call(city, "POST", "/api/v1/locations", "operator",
                {"code": "bm-door", "name": "Cửa Bình Minh", "district": "q7",
                 "ward": "tan-quy", "organisation": "binh-minh"}, 201)
    assert made["ward"] == {"code": "tan-quy", "name": "Tân Quy"}
    assert made["organisation"] == {"code": "binh-minh", "name": "Hộ kinh doanh Bình Minh",
                                    "status": "applied"}
    refusals = [
        ({"code": "l1", "name": "L", "district": "q7", "ward": "ben-nghe"},
         "ward 'ben-nghe' is not in the location's district"),
        ({"code": "l2", "name": "L", "district": "q7", "organisation": "sai-gon"},
         "organisation 'sai-gon' is not in the location's district"),
        ({"code": "l3", "name": "L", "district": "q7", "ward": "tan-phong",
          "organisation": "binh-minh"}, "organisation 'binh-minh' is in another ward"),
        ({"code": "l4", "name": "L", "district": "q7", "ward": "nowhere"},
         "no ward with code 'nowhere'"),
    ]
    for body, message in refusals:
        assert message in call(city, "POST", "/api/v1/locations", "operator", body,
                               status=422)["message"]
    # moving to another district must take the ward and organisation along
    assert "not in the location's district" in call(
        city, "PATCH", "/api/v1/locations/bm-door", "operator", {"district": "q1"},
        status=422)["message"]
    moved = call(city, "PATCH", "/api/v1/locations/bm-door", "operator",
                 {"district": "q1", "ward": "ben-nghe", "organisation": "sai-gon"})
    assert (moved["district"]["code"], moved["ward"]["code"], moved["organisation"]["code"]) == (
        "q1", "ben-nghe", "sai-gon")
    cleared = call(city, "PATCH", "/api/v1/locations/bm-door", "operator",
                   {"organisation": None})
    assert (cleared["ward"]["code"], cleared["organisation"]) == ("ben-nghe", None)
    listed = {i["code"]: i for i in call(city, "GET", "/api/v1/locations")["items"]}
    assert listed["an-phat-gate"]["organisation"]["code"] == "an-phat"
    assert listed["bm-door"]["ward"]["code"] == "ben-nghe"
    with city.sessions() as s:
        entries = [(a.action, a.detail) for a in s.scalars(
            select(AuditLog).where(AuditLog.target == "bm-door").order_by(AuditLog.id))]
    assert entries == [
        ("location.create", {"name": "Cửa Bình Minh", "district": "q7", "ward": "tan-quy",
                             "organisation": "binh-minh"}),
        ("location.update", {"district": ["q7", "q1"], "ward": ["tan-quy", "ben-nghe"],
                             "organisation": ["binh-minh", "sai-gon"]}),
        ("location.update", {"organisation": ["sai-gon", None]})]
