"""The operators' pages in a real Chromium (tests/conftest_browser.py), on SQLite and
PostgreSQL: a kiosk killed with SIGKILL shows up as an outage on a home page that is
already open, without a reload (real Mosquitto with TLS, the ingest worker tracking
presence, a kiosk reporter process); the kiosk list filtered by district; a district
officer who can neither see nor reach another district's kiosk, page or API."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from fleet.models import Kiosk
from tests.fleetdata import seed
from tests.ingestkit import ROOT, Workers, ingest_config, wait_for


@pytest.fixture
def fleet(dashboard):
    """The live dashboard with tests/fleetdata.py's fleet and a Quận 1 officer."""
    ids = seed(dashboard.sessions)
    dashboard.add_user("officer", "district_officer", ids.q1)
    return ids


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


def state(dashboard, kiosk_id):
    with dashboard.sessions() as s:
        return s.scalar(select(Kiosk.state).where(Kiosk.id == kiosk_id))


def test_a_killed_kiosk_appears_on_the_open_home_page(dashboard, fleet, page, broker, workers,
                                                      tmp_path):
    with dashboard.sessions() as s:  # enrolled at the market, not yet heard of
        s.add(Kiosk(id="q1-live", location_id=fleet.market, deployment="test",
                    policy="hcmc-2021", state="never_seen", detail="", session=0))
        s.commit()
    workers.start(ingest_config(dashboard.config, broker))
    files = broker.client_tls("q1-live")
    # a real kiosk's reporter in its own process; keepalive 1 s so that even a connection
    # the kernel does not close is given up (and the will published) within ~2 s
    kiosk = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "scan_producer.py"),
         "--outbox", str(tmp_path / "outbox.sqlite"), "--log", str(tmp_path / "added.txt"),
         "--session-file", str(tmp_path / "session"), "--kiosk", "q1-live", "--port",
         str(broker.port), "--ca", files.ca, "--cert", files.cert, "--key", files.key,
         "--count", "3", "--then", "hold", "--timeout", "60", "--keepalive", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for(lambda: state(dashboard, "q1-live") == "online", 20, "the kiosk online")
        dashboard.login(page, "operator")
        page.goto(dashboard.url + "/?lang=en")
        outages = page.locator("#outages tr.outage")
        assert sorted(outages.evaluate_all("rows => rows.map(r => r.dataset.kiosk)")) == \
            ["q1-b", "q3-a"]
        online = int(page.locator(".n[data-state=online]").inner_text())
        page.evaluate("window.notReloaded = true")  # gone if the page reloads
        kiosk.send_signal(signal.SIGKILL)  # no goodbye: the broker publishes the will
        kiosk.wait(10)
        row = page.locator("#outages tr[data-kiosk='q1-live']")
        row.wait_for(timeout=15_000)
        assert page.evaluate("window.notReloaded") is True
        cells = row.inner_text()
        assert "Bến Thành" in cells and "Quận 1" in cells and "offline" in cells
        assert "under a minute" in cells  # down since just now
        assert int(page.locator(".n[data-state=online]").inner_text()) == online - 1
        assert page.title().startswith("(3) ")
        assert "Live: updated at" in page.locator("#live-status").inner_text()
    finally:
        if kiosk.poll() is None:
            kiosk.kill()
            kiosk.wait()


def test_kiosks_filtered_by_district_and_an_officer_kept_to_theirs(dashboard, fleet,
                                                                    chromium):
    context = chromium.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        dashboard.login(page, "operator")
        page.goto(dashboard.url + "/kiosks?lang=en")
        assert page.locator("#kiosks tr[data-kiosk]").count() == 7
        page.select_option("select[name=district]", "q3")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**district=q3**")
        ids = page.locator("#kiosks tr[data-kiosk]").evaluate_all(
            "rows => rows.map(r => r.dataset.kiosk)")
        assert ids == ["q3-a", "q3-b"]
        page.click("#kiosks a:has-text('q3-a')")  # to the kiosk's page
        assert page.locator("h1").inner_text().startswith("q3-a")
        assert "Station" in page.locator("#config").inner_text()
        page.click("button:has-text('Log out')")

        dashboard.login(page, "officer")
        page.goto(dashboard.url + "/kiosks?lang=en")
        ids = page.locator("#kiosks tr[data-kiosk]").evaluate_all(
            "rows => rows.map(r => r.dataset.kiosk)")
        assert sorted(ids) == ["q1-a", "q1-b", "q1-c", "q1-d"]
        assert page.locator("select[name=district] option").all_inner_texts() == ["Quận 1"]
        response = page.goto(dashboard.url + "/kiosks/q3-a")
        assert response.status == 404 and page.locator("h1").inner_text() == "404"
        api = page.request.get(dashboard.url + "/api/v1/kiosks/q3-a")  # the same cookie
        assert api.status == 404 and api.json()["error"] == "not_found"
        assert page.request.get(dashboard.url + "/api/v1/kiosks/q1-a").status == 200
        page.goto(dashboard.url + "/?lang=en")
        assert page.locator("#outages tr.outage").evaluate_all(
            "rows => rows.map(r => r.dataset.kiosk)") == ["q1-b"]
    finally:
        context.close()
