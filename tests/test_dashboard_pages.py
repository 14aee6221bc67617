"""The operators' pages (fleet/web/home.py, kiosks.py, stats.py) through Flask's test
client, on SQLite and PostgreSQL: what the home page, the kiosk list, a kiosk's page and
the statistics show, the live fragment's ETag, a district officer's scope, and that every
visible text has its Vietnamese. Seed data: tests/fleetdata.py (clock pinned to NOW,
15:00 in Ho Chi Minh City). The browser side is tests/test_dashboard_live.py."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from sqlalchemy import update

from fleet import auth
from fleet.app import create_app
from fleet.models import Kiosk, Outage, ScanSummary
from tests.fleetdata import HOUR, NOW, scan, seed

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[1]
CERT, HOLDER = "ab" * 32, "cd" * 32  # pseudonyms that must never reach a page


@pytest.fixture
def fleet(fleet_app, fleet_db):
    """The seeded fleet, an operator, an admin and a Quận 1 officer; scans in both
    districts; the app's clock pinned to NOW."""
    ids = seed(fleet_db)
    with fleet_db() as s:
        auth.create_user(s, "operator", PASSWORD, "operator")
        auth.create_user(s, "admin", PASSWORD, "admin")
        auth.create_user(s, "officer", PASSWORD, "district_officer", ids.q1)
        n = 0
        for i in range(20):  # q1-a: 20 green in the last 10 hours (not silent)
            n += 1
            s.add(scan(n, "q1-a", ids.market, ids.q1, NOW - 60 - i * 1800, cert=CERT,
                       holder=HOLDER))
        for i, (reason, sub) in enumerate([("expired", None)] * 3 +
                                          [("policy_failed", "vaccination_too_recent")] * 5):
            n += 1
            row = scan(n, "q1-a", ids.market, ids.q1, NOW - 120 - i * 60, "red", reason,
                       cert=CERT, holder=HOLDER)
            row.sub_reason = sub
            s.add(row)
        for i in range(4):  # Quận 3: never visible to the Quận 1 officer
            n += 1
            s.add(scan(n, "q3-a", ids.station, ids.q3, NOW - 2 * HOUR - i * 60, "red", "revoked"))
        # a full outbox summarized 6 red "expired" in the hour before last, at q1-a
        s.add(ScanSummary(kiosk_id="q1-a", summary_id="s1", hour=int(NOW - 2 * HOUR),
                          decision="red", reason="expired", count=6, first=NOW - 2 * HOUR + 10,
                          last=NOW - 2 * HOUR + 900, location_id=ids.market, district_id=ids.q1))
        s.commit()
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids.app = fleet_app
    ids.sessions = fleet_db
    return ids


def client_for(app, user):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"csrf_token": token, "username": user,
                                           "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def text(response) -> str:
    """The page's visible text, one space between words."""
    html = re.sub(r"<script.*?</script>", " ", response.get_data(as_text=True), flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def section(response, name: str) -> str:
    html = response.get_data(as_text=True)
    match = re.search(rf'<section id="{name}".*?</section>', html, flags=re.S)
    assert match, f"no section {name}"
    return match.group(0)


def rows(html: str) -> list[str]:
    """The data-kiosk ids of a fragment's rows, in order."""
    return re.findall(r'<tr[^>]*data-kiosk="([^"]+)"', html)


def cells(html: str, kiosk: str) -> str:
    match = re.search(rf'<tr[^>]*data-kiosk="{kiosk}".*?</tr>', html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", match.group(0))))


# --- home ----------------------------------------------------------------------------------
def test_home_shows_counts_then_outages_longest_first_then_degraded_and_silent(fleet):
    web = client_for(fleet.app, "operator")
    page = web.get("/?lang=en")
    assert page.status_code == 200
    counts = dict(re.findall(r'data-state="(\w+)">(\d+)<', page.get_data(as_text=True)))
    assert counts == {"offline": "2", "degraded": "1", "online": "2", "never_seen": "1",
                      "retired": "1", "unreachable": "0"}
    html = page.get_data(as_text=True)
    # the outages come before the degraded and silent kiosks, the longest outage first
    assert html.index('id="outages"') < html.index('id="degraded"') < html.index('id="silent"')
    outages = section(page, "outages")
    assert rows(outages) == ["q1-b", "q3-a"]
    # q1-b: Bến Thành, Quận 1, down since 13:00 Vietnam time (2 h), behind 1 trust + 3 status
    assert cells(outages, "q1-b").split() == (
        "q1-b Bến Thành Quận 1 offline 05/10 13:00 (2 h 0 min) 05/10 13:00 (2 h 0 min ago) "
        "4 0").split()
    assert "Station" in cells(outages, "q3-a") and "(30 min)" in cells(outages, "q3-a")
    degraded = section(page, "degraded")
    assert rows(degraded) == ["q1-c"] and "missing: status" in cells(degraded, "q1-c")
    # silent: connected, no scan for [web] silent_hours (2 h); q1-a scanned a minute ago
    assert rows(section(page, "silent")) == ["q1-c", "q1-d"]


def test_home_is_vietnamese_by_default(fleet):
    page = text(client_for(fleet.app, "operator").get("/"))
    for words in ("Mất kết nối", "Hoạt động kém", "Không có lượt quét", "2 giờ 0 phút",
                  "Tín hiệu gần nhất", "Dữ liệu chậm", "Hàng chờ gửi"):
        assert words in page
    assert "Outages" not in page and "Last heartbeat" not in page


def test_live_fragment_is_304_until_something_changes_on_any_worker(fleet, fleet_config):
    web = client_for(fleet.app, "operator")
    first = web.get("/live/home?lang=en")
    assert first.status_code == 200 and first.is_json
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache, private"
    # the page embeds the same ETag, so its first poll is a 304
    assert f'data-etag="{etag.strip(chr(34))}"' in web.get("/").get_data(as_text=True)
    assert web.get("/live/home", headers={"If-None-Match": etag}).status_code == 304
    # another worker (its own app, engine and process state) answers the same
    other = create_app(fleet_config)
    other.config["GREENGATE_CLOCK"] = lambda: NOW
    try:
        second = other.test_client()
        second.set_cookie("greengate", web.get_cookie("greengate").value)
        assert second.get("/live/home", headers={"If-None-Match": etag}).status_code == 304
    finally:
        other.extensions["greengate"].engine.dispose()
    # a kiosk goes down (as the presence tracker writes it): the next poll has it
    with fleet.sessions() as s:
        s.execute(update(Kiosk).where(Kiosk.id == "q1-d").values(
            state="offline", state_since=NOW - 5, detail="last will"))
        s.add(Outage(kiosk_id="q1-d", started=NOW - 5, ended=None, cause="last will"))
        s.commit()
    changed = web.get("/live/home", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    data = changed.get_json()
    assert data["counts"]["offline"] == 3
    assert rows(data["html"].split('id="degraded"')[0]) == ["q1-b", "q3-a", "q1-d"]
    # a logged-out script gets a 401 it can act on, not the login form
    assert fleet.app.test_client().get("/live/home").status_code == 401


# --- the officer's scope ------------------------------------------------------------------
def test_a_district_officer_sees_only_their_district_everywhere(fleet):
    web = client_for(fleet.app, "officer")
    home = web.get("/?lang=en")
    assert rows(section(home, "outages")) == ["q1-b"]  # not q3-a
    assert "Station" not in text(home)
    listing = web.get("/kiosks?lang=en")
    assert sorted(rows(listing.get_data(as_text=True))) == ["q1-a", "q1-b", "q1-c", "q1-d"]
    assert "Quận 3" not in text(listing)  # not even as a filter choice
    # another district's kiosk does not exist for them: the page and the API agree
    page = web.get("/kiosks/q3-a")
    assert page.status_code == 404 and "q3-a" not in text(page).replace("/kiosks", "")
    api = web.get("/api/v1/kiosks/q3-a")
    assert api.status_code == 404 and api.get_json()["error"] == "not_found"
    assert web.get("/kiosks/q1-b").status_code == 200
    # naming the other district in a filter is refused, as in the API
    assert web.get("/kiosks?district=q3").status_code == 403
    assert web.get("/stats?district=q3").status_code == 403
    stats = web.get("/stats?lang=en")
    totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', stats.get_data(as_text=True)))
    assert totals == {"total": "34", "green": "20", "red": "14"}  # Quận 3's 4 left out
    assert "revoked" not in section(stats, "top-reasons")


def test_an_officer_without_a_district_sees_nothing(fleet):
    with fleet.sessions() as s:
        auth.create_user(s, "lost", PASSWORD, "district_officer", None)
        s.commit()
    web = client_for(fleet.app, "lost")
    for path in ("/", "/kiosks", "/stats", "/live/home"):
        assert web.get(path).status_code == 403, path


# --- the kiosk list ---------------------------------------------------------------------
FILTERS = [
    ("", ["q1-b", "q3-a", "q1-c", "q3-b", "q1-d", "q1-a", "free"]),  # attention order
    ("?district=q3", ["q3-a", "q3-b"]),
    ("?location=q1-office", ["q1-c", "q1-d"]),
    ("?state=offline", ["q1-b", "q3-a"]),
    ("?district=q1&state=online", ["q1-d", "q1-a"]),
    ("?q=B", ["q1-b", "q3-b"]),
    ("?q=q1-%25", []),  # a LIKE wildcard is a character like any other
    ("?silent=1", ["q1-c", "q1-d"]),
    ("?district=&location=&state=&q=", ["q1-b", "q3-a", "q1-c", "q3-b", "q1-d", "q1-a", "free"]),
]


def test_kiosk_list_filters(fleet):
    web = client_for(fleet.app, "operator")  # one fleet for every filter: seeding is slow
    for query, expected in FILTERS:
        page = web.get("/kiosks" + query)
        assert page.status_code == 200
        assert rows(page.get_data(as_text=True)) == expected, query


# --- one kiosk ----------------------------------------------------------------------------
def test_kiosk_page_timeline_decisions_config_and_no_personal_data(fleet):
    web = client_for(fleet.app, "admin")  # an admin may trace: the page still shows none
    page = web.get("/kiosks/q1-a?lang=en&range=24h")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert CERT not in html and HOLDER not in html
    config = text(web.get("/kiosks/q1-a?lang=en")).split("Configuration")[1]
    # assigned beside applied (the seeded heartbeat is older than the `policy` field)
    assert ("Bến Thành q1-market District Quận 1 Deployment test Policy assigned hcmc-2021 · "
            "applied —") in config
    outages = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", section(page, "outages"))))
    assert "04/10 13:00 04/10 14:00 1 h 0 min last will" in outages
    transitions = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ",
                                                      section(page, "transitions"))))
    assert transitions.index("offline → online") < transitions.index("online → offline")
    decisions = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", section(page, "decisions"))))
    # 20 green, 3 + 6 summarized expired, 5 too recent vaccinations
    assert "34 scans: 20 green, 14 red (41 % red)." in decisions
    assert re.search(r"green valid ok 20 red expired expired 9 red does not meet the policy: "
                     r"vaccinated too recently policy_failed/vaccination_too_recent 5",
                     decisions), decisions
    bundles = section(web.get("/kiosks/q1-b"), "bundles")
    assert re.search(r'data-kind="trust">.*?<td>4</td>\s*<td>5</td>.*?>1<', bundles, re.S)


def test_kiosk_page_of_an_unknown_kiosk_is_404(fleet):
    web = client_for(fleet.app, "operator")
    assert web.get("/kiosks/nope").status_code == 404
    assert web.get("/kiosks/..%2Fx").status_code == 404


# --- statistics ---------------------------------------------------------------------------
def test_stats_page_volumes_ratio_places_reasons_and_chart(fleet):
    web = client_for(fleet.app, "operator")
    page = web.get("/stats?lang=en")
    html = page.get_data(as_text=True)
    totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', html))
    assert totals == {"total": "38", "green": "20", "red": "18"}  # 6 summarized included
    per_district = re.findall(r'data-district="(\w+)"><td>([^<]+)</td><td class="num">(\d+)<',
                              html)
    assert per_district == [("q1", "Quận 1", "34"), ("q3", "Quận 3", "4")]
    assert re.findall(r'data-location="([\w-]+)"', html) == ["q1-market", "q3-station"]
    assert re.findall(r'data-reason="([\w/]+)"', html) == [
        "expired", "policy_failed/vaccination_too_recent", "revoked"]
    # the chart: inline SVG, one bar group per hour, no script, no external resource
    svg = re.search(r"<svg.*?</svg>", html, re.S).group(0)
    assert svg.count('<g class="hour">') == 24 and "http" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "05/10 13:00: 9 scans, 2 green, 7 red" in unescape(svg)  # 6 summarized
    week = web.get("/stats?range=7d&location=q3-station").get_data(as_text=True)
    assert week.count('<g class="hour">') == 168
    assert dict(re.findall(r'data-total="(\w+)">(\d+)<', week))["total"] == "4"


# --- languages ----------------------------------------------------------------------------
PAGES = ["fleet/web/home.py", "fleet/web/kiosks.py", "fleet/web/stats.py",
         "fleet/web/display.py", "fleet/templates/home.html", "fleet/templates/home_live.html",
         "fleet/templates/kiosks.html", "fleet/templates/kiosk.html",
         "fleet/templates/stats.html", "fleet/templates/_kiosk_macros.html"]


def test_every_text_of_these_pages_has_its_vietnamese():
    with (ROOT / "fleet/translations/vi/LC_MESSAGES/messages.po").open("rb") as f:
        catalogue = read_po(f, locale="vi")
    missing = []
    for name in PAGES:
        python = name.endswith(".py")
        for _line, message, _c, _ctx in extract_from_file(
                "python" if python else "jinja2.ext:babel_extract", ROOT / name,
                keywords={"_": None, "gettext": None, "_l": None},
                options={} if python else {"extensions": "jinja2.ext.i18n"}):
            entry = catalogue.get(message)
            if entry is None or not entry.string:
                missing.append(f"{name}: {message!r}")
    assert missing == []
