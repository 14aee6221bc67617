"""A real headless Chromium (Debian's `chromium`, driven by Playwright) against the fleet
app served on a free port. `.ci/run` installs chromium (scripts/setup.sh --with
browser); a missing browser fails these tests with the install command.

    def test_x(dashboard, page):              # dashboard: the live fleet, page: a tab
        dashboard.login(page, "operator")
        page.goto(dashboard.url + "/")
"""

from __future__ import annotations

import os
import shutil
import threading
from types import SimpleNamespace

import pytest
from werkzeug.serving import make_server

from fleet import auth, migrate
from fleet.app import create_app
from fleet.config import load
from fleet.db import make_engine, make_sessions

PASSWORD = "correct horse battery"
INSTALL_HINT = ("Chromium is not installed: the dashboard tests need a real browser. Install "
                "it with `bash scripts/setup.sh --with browser` (apt: chromium), or point "
                "GREENGATE_CHROMIUM at the binary.")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("GREENGATE_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium():
    """A Playwright Browser on Debian's chromium (one per test session)."""
    executable = find_chromium()
    if executable is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    context.close()


class LiveFleet:
    """The fleet app on 127.0.0.1:<port> in a thread, with one user per role."""

    def __init__(self, config):
        self.config = config
        engine = make_engine(config.database_url)
        migrate.upgrade(engine)
        self.sessions = make_sessions(engine)
        self.engine = engine
        self.app = create_app(config)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.users = {}

    def add_user(self, name: str, role: str, district_id: int | None = None):
        with self.sessions() as session:
            user = auth.create_user(session, name, PASSWORD, role, district_id)
            session.commit()
            self.users[name] = user.id
        return user

    def login(self, page, name: str, lang: str = "en") -> None:
        page.goto(f"{self.url}/login?lang={lang}")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login" not in url)

    def close(self):
        self.server.shutdown()
        self.app.extensions["greengate"].engine.dispose()
        self.engine.dispose()


@pytest.fixture
def dashboard(tmp_path, database_url):
    config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                       "database_url": database_url, "deployments": ["test"]},
                  web={"secure_cookies": False})
    live = LiveFleet(config)
    live.thread.start()
    for name, role in (("admin", "admin"), ("operator", "operator"),
                       ("health", "health_official")):
        live.add_user(name, role)
    yield live
    live.close()



