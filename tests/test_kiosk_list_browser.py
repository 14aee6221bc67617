"""The kiosk list that scales, a phone, the home page's clock and a Vietnamese page scan,
in a real Chromium (tests/conftest_browser.py), on SQLite and PostgreSQL.

* /kiosks is paged: 50 a page, the count of all, the filters kept from page to page;
* on a 390 px phone no page scrolls sideways, the location filter included (long names);
* the home page's "updated at" stays in Vietnam time after polling, whatever the
  browser's own time zone;
* every page of a fleet in every state (tests/everystate.py) reads in Vietnamese: the
  scan of the rendered text fails on any English word (tests/test_i18n.py's check).
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fleet.models import District, Kiosk, Location
from tests import everystate
from tests.test_i18n import english_in, english_vocabulary, stored_english

# the text a reader sees, without codes and without the kiosks' own words the pages quote
# as sent (lang="en")
VISIBLE_TEXT = """() => {
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll('[lang=en], code, script, style, svg').forEach(e => e.remove());
  document.body.appendChild(copy);
  copy.style.position = 'absolute';
  const text = copy.innerText;
  copy.remove();
  return text;
}"""
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def many_kiosks(sessions, n_online=95, n_offline=25):
    """Two districts; a location with a very long name (the phone's filter must hold it)."""
    with sessions() as s:
        q1, q7 = District(code="q1", name="Quận 1"), District(code="q7", name="Quận 7")
        s.add_all([q1, q7])
        s.flush()
        long_name = ("Trung tâm thương mại và siêu thị Phú Mỹ Hưng, cổng số 3, tầng trệt, "
                     "bên cạnh quầy thông tin khách hàng")
        market = Location(code="q1-market", name="Chợ Bến Thành", address="", district_id=q1.id)
        mall = Location(code="q7-mall", name=long_name, address="", district_id=q7.id)
        s.add_all([market, mall])
        s.flush()
        for i in range(n_online):
            s.add(Kiosk(id=f"q1-{i:03d}", location_id=market.id, deployment="test",
                        policy="hcmc-2021", state="online", state_since=1000.0 + i, detail="",
                        session=1, enrolled_at=0.0))
        for i in range(n_offline):
            s.add(Kiosk(id=f"q7-{i:03d}", location_id=mall.id, deployment="test",
                        policy="hcmc-2021", state="offline", state_since=1000.0 + i,
                        detail="connection lost", session=1, enrolled_at=0.0))
        s.commit()


def ids_on(page):
    return page.locator("#kiosks tr[data-kiosk]").evaluate_all(
        "rows => rows.map(r => r.dataset.kiosk)")


def test_the_kiosk_list_pages_and_keeps_its_filters(dashboard, page):
    many_kiosks(dashboard.sessions)
    dashboard.login(page, "operator")
    page.goto(dashboard.url + "/kiosks?lang=en")
    first = ids_on(page)
    assert len(first) == 50 and first[:25] == [f"q7-{i:03d}" for i in range(25)]  # outages first
    assert page.locator("#result-count").inner_text().startswith("Kiosks 1–50 of 120;")
    assert page.locator("#pager .here").inner_text() == "page 1 of 3"
    page.click("#pager a[rel=next]")
    page.wait_for_url("**page=2**")
    assert ids_on(page) == [f"q1-{i:03d}" for i in range(25, 75)]
    page.click("#pager a[rel=last]")
    assert ids_on(page) == [f"q1-{i:03d}" for i in range(75, 95)]
    assert page.locator("#result-count").inner_text().startswith("Kiosks 101–120 of 120;")
    assert page.locator("#pager a[rel=next]").count() == 0

    # a filter, then its pages: the filter travels in the links
    page.goto(dashboard.url + "/kiosks?lang=en")
    page.select_option("select[name=state]", "online")
    page.fill("input[name=q]", "q1-0")
    page.click("form.filters button[type=submit]")
    assert page.locator("#result-count").inner_text().startswith("Kiosks 1–50 of 95;")
    page.click("#pager a[rel=next]")
    page.wait_for_url(re.compile(r".*page=2.*"))
    assert "state=online" in page.url and "q=q1-0" in page.url
    assert ids_on(page) == [f"q1-{i:03d}" for i in range(50, 95)]
    assert page.locator("select[name=state]").input_value() == "online"
    # a page past the end shows the last one; nonsense is the first
    page.goto(dashboard.url + "/kiosks?lang=en&state=offline&page=99")
    assert ids_on(page) == [f"q7-{i:03d}" for i in range(25)]
    page.goto(dashboard.url + "/kiosks?lang=en&page=-3x")
    assert ids_on(page) == first


@pytest.mark.parametrize("path", ["/kiosks", "/kiosks?state=offline", "/", "/kiosks/q7-001",
                                  "/stats"])
def test_a_390px_phone_never_scrolls_sideways(dashboard, chromium, path):
    many_kiosks(dashboard.sessions, n_online=5, n_offline=5)
    context = chromium.new_context(viewport={"width": 390, "height": 844}, locale="vi-VN")
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        dashboard.login(page, "operator", lang="vi")
        page.goto(dashboard.url + path)
        assert page.evaluate(OVERFLOW) <= 0, f"{path} is wider than the phone"
        if path.startswith("/kiosks") and "/kiosks/" not in path:
            box = page.locator("select[name=location]").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
            # the long name is chosen, and still nothing overflows
            page.select_option("select[name=location]", "q7-mall")
            assert page.evaluate(OVERFLOW) <= 0
            box = page.locator("select[name=location]").bounding_box()
            assert box["x"] + box["width"] <= 390, box
    finally:
        context.close()


def test_updated_at_stays_in_vietnam_time_after_polling(dashboard, chromium):
    """The browser is in New York; the page's times are Vietnam time, before and after
    the first poll (the poller used the browser's clock and zone)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-US",
                                   timezone_id="America/New_York")
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        dashboard.login(page, "operator")
        page.goto(dashboard.url + "/?lang=en")
        status = page.locator("#live-status")
        status.filter(has_text="Live: updated at").wait_for(timeout=10_000)
        shown = re.search(r"(\d\d):(\d\d):(\d\d)", status.inner_text()).groups()
        now = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
        seconds = int(shown[0]) * 3600 + int(shown[1]) * 60 + int(shown[2])
        drift = abs(seconds - (now.hour * 3600 + now.minute * 60 + now.second))
        assert min(drift, 86400 - drift) <= 30, (shown, now.isoformat())
    finally:
        context.close()


def test_a_vietnamese_page_scan_finds_no_english(dashboard, page):
    """Every page of a fleet in every state, as Chromium renders it, in Vietnamese (the
    default): no English word outside codes and the kiosks' own quoted words."""
    ids = everystate.build(dashboard.sessions)
    vocabulary = english_vocabulary(stored_english(dashboard.sessions))
    dashboard.add_user("lan", "admin")  # a name, not an English word
    dashboard.login(page, "lan", lang="vi")
    problems = {}
    paths = ["/", "/kiosks", "/kiosks?state=degraded", "/stats", "/alerts"] + \
        [f"/kiosks/{kid}" for kid in ids.kiosks]
    for path in paths:
        page.goto(dashboard.url + path)
        words = english_in(page.evaluate(VISIBLE_TEXT), vocabulary)
        if words:
            problems[path] = sorted(set(words))
    assert not problems, f"English on Vietnamese pages: {problems}"
    # the scan sees English when there is some
    page.goto(dashboard.url + "/kiosks/vi-storage?lang=en")
    assert "storage" in english_in(page.evaluate(VISIBLE_TEXT), vocabulary)
