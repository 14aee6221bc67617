"""Worker rosters, the fleet side (docs/rosters.md#managing-the-roster), on SQLite and
PostgreSQL through the JSON API: workers linked by real signed HC1 QR texts (verified
with the deployment's trust list: a forged one is refused) or by a certificate
identifier; a new certificate of the same holder matches the same worker; the quota;
CSV imports all or nothing with every bad row named by its line; the scope of managers,
ward and district officers; every change audited and the roster bundle re-issued."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fleet import bundles, roster_workers, rosters
from fleet.models import AuditLog, Organisation, PublishedBundle, Worker
from fleet.roster_workers import parse_csv
from greengate import bundle as bundle_format
from greengate import roster as roster_format
from greengate.sealing import identity_bytes
from tests.rosterkit import AN, BINH, CUONG, holder, qr, seed

URL = "/api/v1/organisations/{}/workers"


@pytest.fixture
def city(api, fleet_config, es256):
    return seed(api.sessions, fleet_config, es256)


def workers(api, code="org-a", removed=False):
    with api.sessions() as s:
        stmt = select(Worker).join(Organisation, Organisation.id == Worker.organisation_id) \
            .where(Organisation.code == code)
        if not removed:
            stmt = stmt.where(Worker.removed_at.is_(None))
        return list(s.scalars(stmt.order_by(Worker.id)))


def roster_bundles(api, org_id):
    with api.sessions() as s:
        return list(s.scalars(select(PublishedBundle).where(
            PublishedBundle.kind == "roster", PublishedBundle.base == org_id)
            .order_by(PublishedBundle.version)))


def roster_versions(api, org_id):
    return [b.version for b in roster_bundles(api, org_id)]


def test_a_worker_linked_by_qr_matches_every_certificate_of_the_holder(
        api, city, es256, fleet_config):
    manager = city["token:manager-a"]
    answer = api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "Nguyễn Văn An", "job": "thợ may", "qr": qr(es256, AN)})
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["linked"] == "holder" and body["linked_via"] == "api"
    assert "holder_key" not in body and "cert_key" not in body  # keys never leave the fleet
    [worker] = workers(api)
    want = rosters.holder_entry_hex(fleet_config, "org-a", holder(AN))
    assert worker.holder_key == want and worker.cert_key is None
    # the roster bundle for the organisation's kiosks was signed in the same transaction,
    # and a kiosk of the organisation finds the holder's NEXT certificate on it
    [issued] = roster_bundles(api, city["org-a"])
    signer = bundles.load_signing_key(fleet_config)
    verified = bundle_format.open_bundle(bytes(issued.raw), signer.public_key(), "test")
    roster = roster_format.parse_roster(verified.body, issued.version)
    assert roster.kiosks == {"ka1", "ka2"} and roster.organisation == "org-a"
    assert roster.member(identity_bytes(holder(AN)), "URN:UVCI:01:VN:SOMETHING-NEW")
    assert not roster.member(identity_bytes(holder(BINH)), None)
    # a second certificate of the same person (another dose, another ci) is the same worker
    again = api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "An again", "qr": qr(es256, AN, dose=2)})
    assert again.status_code == 409 and "worker" in again.get_json()["message"]
    assert len(workers(api)) == 1
    listed = api.client.get(URL.format("org-a"), headers=manager).get_json()
    assert (listed["count"], listed["quota"]) == (1, 3)
    assert listed["workers"][0]["display_name"] == "Nguyễn Văn An"
    with api.sessions() as s:
        actions = [a.action for a in s.scalars(select(AuditLog).where(
            AuditLog.target == "org-a").order_by(AuditLog.id))]
    assert "roster.add" in actions and "roster.publish" in actions


def test_forged_and_unreadable_qr_texts_are_refused_and_change_nothing(
        api, city, es256, untrusted):
    manager = city["token:manager-a"]
    good = qr(es256, AN)
    tampered = good[:-12] + ("A" if good[-12] != "A" else "B") + good[-11:]
    for text, words in ((qr(untrusted, AN), "trust list"), (tampered, ""),
                        ("HC1:NOT-BASE45!!", "readable"), ("hello", "readable"),
                        ("HC1:" + "0" * 5000, "")):
        answer = api.client.post(URL.format("org-a"), headers=manager,
                                 json={"display_name": "X", "qr": text})
        assert answer.status_code == 422, (text[:30], answer.get_json())
        assert words in answer.get_json()["message"]
    assert workers(api) == [] and roster_bundles(api, city["org-a"]) == []


def test_a_certificate_identifier_links_that_certificate_only(api, city, fleet_config):
    manager = city["token:manager-a"]
    answer = api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "Lê Thị Bình", "ci": "URN:UVCI:01:VN:ABC123"})
    assert answer.status_code == 201 and answer.get_json()["linked"] == "certificate"
    [worker] = workers(api)
    assert worker.cert_key == rosters.cert_entry_hex("URN:UVCI:01:VN:ABC123")
    assert worker.holder_key is None
    for bad in ("", "two words", "x" * 200, "bell\x07"):
        answer = api.client.post(URL.format("org-a"), headers=manager,
                                 json={"display_name": "Y", "ci": bad})
        assert answer.status_code == 422, bad
    both = api.client.post(URL.format("org-a"), headers=manager,
                           json={"display_name": "Y", "ci": "URN:X", "qr": "HC1:X"})
    assert both.status_code == 422 and "not both" in both.get_json()["message"]


def test_the_quota_caps_the_roster_and_only_an_approved_organisation_has_one(
        api, city, es256):
    manager = city["token:manager-a"]
    for n, person in enumerate((AN, BINH, CUONG)):
        assert api.client.post(URL.format("org-a"), headers=manager, json={
            "display_name": f"w{n}", "qr": qr(es256, person)}).status_code == 201
    before = roster_versions(api, city["org-a"])
    full = api.client.post(URL.format("org-a"), headers=manager, json={"display_name": "w4"})
    assert full.status_code == 409 and "quota" in full.get_json()["message"]
    assert len(workers(api)) == 3 and roster_versions(api, city["org-a"]) == before
    # removing one makes room; the removed worker stays in the history
    first = workers(api)[0]
    gone = api.client.delete(f"{URL.format('org-a')}/{first.id}", headers=manager)
    assert gone.status_code == 200 and gone.get_json()["removed_at"] is not None
    assert len(workers(api)) == 2 and len(workers(api, removed=True)) == 3
    assert api.client.delete(f"{URL.format('org-a')}/{first.id}",
                             headers=manager).status_code == 404
    assert api.client.post(URL.format("org-a"), headers=manager,
                           json={"display_name": "w4"}).status_code == 201
    # the same person may come back once removed
    assert api.client.patch(f"{URL.format('org-a')}/{workers(api)[-1].id}", headers=manager,
                            json={"qr": qr(es256, AN, dose=3)}).status_code == 200
    # an organisation that is only applied has no roster
    applied = api.client.post(URL.format("org-c"), headers=city["token:root"],
                              json={"display_name": "z"})
    assert applied.status_code == 409 and "approved" in applied.get_json()["message"]


def test_update_renames_and_relinks(api, city, es256, fleet_config):
    manager = city["token:manager-a"]
    wid = api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "An", "ci": "URN:UVCI:01:VN:OLD"}).get_json()["id"]
    answer = api.client.patch(f"{URL.format('org-a')}/{wid}", headers=manager,
                              json={"display_name": "Nguyễn Văn An", "job": "bảo vệ",
                                    "qr": qr(es256, AN)})
    assert answer.status_code == 200
    body = answer.get_json()
    assert (body["display_name"], body["job"], body["linked"]) == ("Nguyễn Văn An", "bảo vệ",
                                                                   "holder")
    [worker] = workers(api)
    assert worker.holder_key == rosters.holder_entry_hex(fleet_config, "org-a", holder(AN))
    assert worker.cert_key is None
    assert api.client.patch(f"{URL.format('org-a')}/{wid}", headers=manager,
                            json={}).status_code == 422
    assert api.client.patch(f"{URL.format('org-a')}/{wid}", headers=manager,
                            json={"display_name": "  "}).status_code == 422


# --- CSV ------------------------------------------------------------------------------------
def csv_of(*lines, bom=False) -> bytes:
    text = "\r\n".join(lines) + "\r\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def test_a_good_csv_is_previewed_then_imported_whole(api, city, es256, fleet_config):
    manager = city["token:manager-b"]
    data = csv_of("Display_Name;job;qr;ci",
                  f"Nguyễn Văn An;thợ may;{qr(es256, AN)};",
                  "Lê Thị Bình;;;URN:UVCI:01:VN:B1",
                  '"Trần ""Cường""";bảo vệ;;', "", bom=True)
    url = URL.format("org-b") + "/import"
    preview = api.client.post(url + "?dry_run=1", headers=manager, data=data,
                              content_type="text/csv")
    assert preview.status_code == 200, preview.get_json()
    body = preview.get_json()
    assert body["ok"] and body["dry_run"] and (body["rows"], body["after"]) == (3, 3)
    assert [(p["line"], p["display_name"], p["linked"]) for p in body["preview"]] == [
        (2, "Nguyễn Văn An", "holder"), (3, "Lê Thị Bình", "certificate"),
        (4, 'Trần "Cường"', None)]
    assert workers(api, "org-b") == [] and roster_bundles(api, city["org-b"]) == []
    done = api.client.post(url, headers=manager, data=data, content_type="text/csv")
    assert done.status_code == 201, done.get_json()
    made = workers(api, "org-b")
    assert [w.display_name for w in made] == ["Nguyễn Văn An", "Lê Thị Bình", 'Trần "Cường"']
    assert made[0].holder_key == rosters.holder_entry_hex(fleet_config, "org-b", holder(AN))
    assert made[0].linked_via == "csv" and made[2].linked_via is None
    assert len(roster_bundles(api, city["org-b"])) == 1  # one bundle for the whole file
    # a multipart upload (what the page sends) works the same; now every row is a duplicate
    again = api.client.post(url, headers=manager,
                            data={"file": (io.BytesIO(data), "roster.csv")},
                            content_type="multipart/form-data")
    assert again.status_code == 422
    assert [e["line"] for e in again.get_json()["errors"]] == [2, 3]


def test_bad_rows_are_named_by_line_and_nothing_is_added(api, city, es256, untrusted):
    manager = city["token:manager-b"]
    data = csv_of("display_name,job,qr,ci",
                  f"An,may,{qr(es256, AN)},",          # 2 fine
                  ",no name,,",                         # 3 no display name
                  f"Forged,x,{qr(untrusted, BINH)},",   # 4 forged
                  "Both,x,HC1:ABC,URN:X",               # 5 both
                  "Short,x",                            # 6 too few fields
                  f"An twice,y,{qr(es256, AN, dose=2)},",  # 7 the same holder as line 2
                  "Bad ci,x,,two words")                # 8
    answer = api.client.post(URL.format("org-b") + "/import", headers=manager, data=data)
    assert answer.status_code == 422
    errors = {e["line"]: e["message"] for e in answer.get_json()["errors"]}
    assert set(errors) == {3, 5, 6, 8}  # the file's own faults first: nothing verified yet
    assert "display_name" in errors[3] and "not both" in errors[5]
    assert "fields" in errors[6]
    fixed = csv_of("display_name,job,qr,ci", f"An,may,{qr(es256, AN)},",
                   f"Forged,x,{qr(untrusted, BINH)},", f"An twice,y,{qr(es256, AN, dose=2)},")
    answer = api.client.post(URL.format("org-b") + "/import", headers=manager, data=fixed)
    assert answer.status_code == 422
    errors = {e["line"]: e["message"] for e in answer.get_json()["errors"]}
    assert set(errors) == {3, 4} and "trust list" in errors[3] and "line 2" in errors[4]
    assert workers(api, "org-b") == []


def test_a_csv_that_would_pass_the_quota_is_refused_whole(api, city):
    manager = city["token:manager-a"]  # quota 3
    assert api.client.post(URL.format("org-a"), headers=manager,
                           json={"display_name": "already"}).status_code == 201
    data = csv_of("display_name", "one", "two", "three")
    for query in ("?dry_run=1", ""):
        answer = api.client.post(URL.format("org-a") + "/import" + query, headers=manager,
                                 data=data)
        assert answer.status_code == 409, answer.get_json()
        assert "quota of 3" in answer.get_json()["message"]
    assert [w.display_name for w in workers(api)] == ["already"]
    data = csv_of("display_name", "one", "two")
    assert api.client.post(URL.format("org-a") + "/import", headers=manager,
                           data=data).status_code == 201
    assert len(workers(api)) == 3


@pytest.mark.parametrize("data,line,words", [
    (b"", 0, "empty"),
    (b"\xff\xfe\x00d\x00i", 1, "UTF-8"),
    (b"display_name\nok\n\xc3\x28\n", 3, "UTF-8"),
    (b"display_name\nA\x00B\n", 2, "NUL"),
    (b"name,job\nx,y\n", 1, "unknown column"),
    (b"display_name,display_name\nx,y\n", 1, "twice"),
    (b"job,qr\nx,y\n", 1, "no display_name"),
    (b"display_name\n", 0, "no worker"),
    (b'display_name\n"unterminated\n', 2, "CSV"),
    (b"display_name\n" + b"x" * (roster_workers.MAX_CSV_BYTES), 0, "at most"),
])
def test_the_csv_parser_names_what_is_wrong(data, line, words):
    rows, errors = parse_csv(data)
    assert rows == [] and errors, errors
    assert errors[0][0] == line and words in errors[0][1], errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400),
                 st.tuples(st.sampled_from(["", "display_name;job\n", "display_name,qr,ci\n"]),
                           st.text(alphabet=st.sampled_from(list('abc,;"\r\n \t\x00é\ufeff')),
                                   max_size=200))
                 .map(lambda parts: (parts[0] + parts[1]).encode())))
def test_the_csv_parser_is_total(data):
    rows, errors = parse_csv(data)
    assert isinstance(rows, list) and isinstance(errors, list)
    assert rows or errors  # never silently nothing
    for line, message in errors:
        assert isinstance(line, int) and line >= 0 and isinstance(message, str) and message
    for row in rows:
        assert row.display_name and len(row.display_name) <= 200


# --- scope ----------------------------------------------------------------------------------
def test_scope_managers_own_organisation_officers_read_only(api, city):
    add = {"display_name": "someone"}
    assert api.client.post(URL.format("org-a"), headers=city["token:manager-a"],
                           json=add).status_code == 201
    wid = workers(api)[0].id
    # the other organisation's manager: as if org-a did not exist, for every route
    other = city["token:manager-b"]
    for method, url, body in (("GET", URL.format("org-a"), None),
                              ("POST", URL.format("org-a"), add),
                              ("PATCH", f"{URL.format('org-a')}/{wid}", add),
                              ("DELETE", f"{URL.format('org-a')}/{wid}", None),
                              ("POST", URL.format("org-a") + "/import", None),
                              ("GET", "/api/v1/organisations/org-a/enrolments", None),
                              ("POST", "/api/v1/organisations/org-a/enrolments",
                               {"kiosk": "ka1", "worker": wid})):
        answer = api.client.open(url, method=method, headers=other, json=body)
        assert answer.status_code == 404, (method, url, answer.status_code)
    # ward officers: their ward's organisations, read only
    w1, w2 = city["token:ward1"], city["token:ward2"]
    listed = api.client.get(URL.format("org-a"), headers=w1)
    assert listed.status_code == 200 and listed.get_json()["count"] == 1
    assert api.client.get(URL.format("org-a"), headers=w2).status_code == 404
    assert api.client.post(URL.format("org-a"), headers=w1, json=add).status_code == 403
    assert api.client.delete(f"{URL.format('org-a')}/{wid}", headers=w1).status_code == 403
    # district officers: their district's, read only; another district's: not found
    assert api.client.get(URL.format("org-a"), headers=city["token:chief-q1"]).status_code == 200
    assert api.client.get(URL.format("org-a"), headers=city["token:chief-q2"]).status_code == 404
    assert api.client.post(URL.format("org-a"), headers=city["token:chief-q1"],
                           json=add).status_code == 403
    # health officials do not see rosters; operators and admins keep any
    assert api.client.get(URL.format("org-a"), headers=city["token:health1"]).status_code == 403
    assert api.client.post(URL.format("org-b"), headers=city["token:ops"],
                           json=add).status_code == 201
    assert len(workers(api)) == 1


def test_enrolment_is_opened_on_a_kiosk_of_the_organisation_only(api, city):
    manager = city["token:manager-a"]
    url = "/api/v1/organisations/org-a/enrolments"
    opened = api.client.post(url, headers=manager, json={"kiosk": "ka1",
                                                         "display_name": "Người mới"})
    assert opened.status_code == 201, opened.get_json()
    body = opened.get_json()
    assert body["outcome"] == "open" and body["kiosk"] == "ka1"
    [worker] = workers(api)
    assert worker.display_name == "Người mới" and worker.holder_key is None
    # another kiosk of another organisation, an unknown kiosk, a silly duration
    for payload in ({"kiosk": "kb1", "worker": worker.id}, {"kiosk": "nope", "worker": worker.id},
                    {"kiosk": "ka1", "worker": worker.id, "minutes": 600},
                    {"kiosk": "ka1"}, {"kiosk": "ka1", "worker": 999999}):
        answer = api.client.post(url, headers=manager, json=payload)
        assert answer.status_code in (404, 422), (payload, answer.status_code)
    # a new one on the same kiosk replaces the open one
    again = api.client.post(url, headers=manager, json={"kiosk": "ka1", "worker": worker.id,
                                                        "minutes": 2})
    assert again.status_code == 201
    listed = api.client.get(url, headers=manager).get_json()["enrolments"]
    assert [e["outcome"] for e in listed] == ["open", "replaced"]
    assert api.client.get(url, headers=city["token:ward1"]).status_code == 200
    with api.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog).where(
            AuditLog.action == "roster.enrol")) == 2


def test_a_lost_roster_secret_is_refused_once_workers_are_linked_not_made_anew(
        api, city, es256, fleet_config):
    """A new secret would silently make every workers-only kiosk turn every linked worker
    away; the fleet refuses until the secret is restored from the backup."""
    manager = city["token:manager-a"]
    assert api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "An", "qr": qr(es256, AN)}).status_code == 201
    path = rosters.secret_path(fleet_config)
    kept = path.read_bytes()
    path.unlink()
    answer = api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "Bình", "qr": qr(es256, BINH)})
    assert answer.status_code == 503, answer.get_json()
    assert "roster secret is missing" in answer.get_json()["message"]
    # a change that only re-signs the roster is refused the same way
    [an] = workers(api)
    assert api.client.delete(f"{URL.format('org-a')}/{an.id}",
                             headers=manager).status_code == 503
    assert not path.exists() and [w.display_name for w in workers(api)] == ["An"]
    path.write_bytes(kept)
    assert api.client.post(URL.format("org-a"), headers=manager, json={
        "display_name": "Bình", "qr": qr(es256, BINH)}).status_code == 201
    assert workers(api)[1].holder_key == rosters.holder_entry_hex(fleet_config, "org-a",
                                                                  holder(BINH))
