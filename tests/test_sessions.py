"""Sessions that end, body limits and login throttling (fleet/auth.py, fleet/app.py,
fleet/web/session_views.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import re
import time

import pytest
from sqlalchemy import select

from fleet import auth
from fleet.app import create_app
from fleet.config import load
from fleet.models import LoginFailure

PASSWORD = "correct horse battery"


def csrf_of(client, path="/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, username="admin", password=PASSWORD, address="192.0.2.1"):
    return client.post("/login", data={"csrf_token": csrf_of(client), "username": username,
                                       "password": password},
                       environ_base={"REMOTE_ADDR": address})


def cookie_of(client) -> str:
    return client.get_cookie("greengate").value


def replay(app, cookie):
    """A fresh client with a copy of a login cookie: (GET /audit, GET /api/v1/audit)."""
    thief = app.test_client()
    thief.set_cookie("greengate", cookie)
    return thief.get("/audit"), thief.get("/api/v1/audit")


def is_login_redirect(response) -> bool:
    return response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.fixture
def site(api, fleet_app):
    """The `api` fixture's users (admin, operator, …), plus a second admin, lan."""
    with api.sessions() as s:
        auth.create_user(s, "lan", PASSWORD, "admin")
        s.commit()
    return fleet_app


# --- sessions that end ----------------------------------------------------------------------
def test_logout_ends_every_session_of_the_user(site):
    client, other_tab = site.test_client(), site.test_client()
    assert login(client).status_code == 302
    assert login(other_tab).status_code == 302
    copy = cookie_of(client)
    page, api = replay(site, copy)
    assert page.status_code == 200 and api.status_code == 200  # the copy works, before
    assert client.post("/logout", data={"csrf_token": csrf_of(client, "/")}).status_code == 302
    page, api = replay(site, copy)
    assert is_login_redirect(page) and api.status_code == 401
    assert is_login_redirect(other_tab.get("/audit"))  # the other browser too
    assert login(client).status_code == 302  # a new login works
    assert client.get("/audit").status_code == 200


@pytest.mark.parametrize("change", [{"disabled": True}, {"password": "a brand new password"}])
def test_disabling_or_a_new_password_ends_the_users_sessions(site, api, change):
    victim = site.test_client()
    assert login(victim, "lan").status_code == 302
    copy = cookie_of(victim)
    assert replay(site, copy)[1].status_code == 200
    assert api.client.patch("/api/v1/users/lan", json=change,
                            headers=api.admin).status_code == 200
    page, api_answer = replay(site, copy)
    assert is_login_redirect(page) and api_answer.status_code == 401
    if "disabled" in change:  # enabling again does not bring the old cookie back
        api.client.patch("/api/v1/users/lan", json={"disabled": False}, headers=api.admin)
        assert replay(site, copy)[1].status_code == 401
    else:
        assert login(site.test_client(), "lan", "a brand new password").status_code == 302


def test_an_admin_who_changes_their_own_password_logs_in_again(site):
    client = site.test_client()
    login(client)
    response = client.patch("/api/v1/users/admin", json={"password": "another good one"},
                            headers={"X-CSRF-Token": csrf_of(client, "/")})
    assert response.status_code == 200
    assert client.get("/api/v1/audit").status_code == 401


# --- body limits ------------------------------------------------------------------------------
class Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""
    read_from = False

    def readable(self):
        return True

    def seekable(self):  # the test client asks where the body starts and ends
        return True

    position = 0

    def seek(self, offset, whence=0):
        self.position = FORTY_MB if whence == 2 else offset
        return self.position

    def tell(self):
        return self.position

    def readinto(self, buffer):
        Unreadable.read_from = True
        raise AssertionError("the body was read")


FORTY_MB = 40 * 1024 * 1024


@pytest.mark.parametrize("path", ["/api/v1/enrol", "/login", "/api/v1/districts"])
def test_a_40_mb_body_gets_413_without_being_read(site, api, path):
    Unreadable.read_from = False
    headers = {"Content-Type": "application/json"}
    if path == "/api/v1/districts":
        headers.update(api.admin)  # logged in: the large limit, 16 MiB by default
    response = site.test_client().post(path, input_stream=Unreadable(),
                                       content_length=FORTY_MB, headers=headers)
    assert response.status_code == 413 and not Unreadable.read_from
    if path.startswith("/api/"):
        assert response.get_json()["error"] == "request_entity_too_large"
        assert str(FORTY_MB) in response.get_json()["message"]


def test_routes_without_a_login_take_small_bodies_only(site, api):
    client = site.test_client()
    padding = "x" * (70 * 1024)  # over the 64 KiB default for anonymous routes
    assert client.post("/api/v1/enrol", json={"token": padding}).status_code == 413
    assert client.post("/api/v1/enrol", json={"token": "x"}).status_code != 413
    body = {"code": "q9", "name": "Quận 9", "pad": padding}  # logged in: the large limit
    response = client.post("/api/v1/districts", json=body, headers=api.admin)
    assert response.status_code == 422 and "pad" in response.get_json()["message"]


def test_the_body_limits_come_from_the_config(fleet_config, api):
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                  web={"max_body_bytes": 1000, "max_anonymous_body_bytes": 100})
    app = create_app(config)
    try:
        client = app.test_client()
        assert client.post("/api/v1/enrol", json={"token": "x" * 200}).status_code == 413
        response = client.post("/api/v1/districts", json={"code": "q9", "name": "y" * 2000},
                               headers=api.admin)
        assert response.status_code == 413
    finally:
        app.extensions["greengate"].engine.dispose()


# --- login throttling ---------------------------------------------------------------------------
def failures(client, n, username="admin", address="198.51.100.7"):
    return [login(client, username, "wrong password!", address).status_code for _ in range(n)]


def test_one_address_guessing_is_stopped_and_the_admin_still_logs_in_elsewhere(site):
    attacker = site.test_client()
    assert failures(attacker, 5) == [401] * 5
    refused = login(attacker, "admin", "wrong password!", "198.51.100.7")
    assert refused.status_code == 429 and 800 < int(refused.headers["Retry-After"]) <= 900
    # from the attacker's address even the right password waits: no guessing past the limit
    assert login(attacker, address="198.51.100.7").status_code == 429
    # the real admin, from their own address, is not locked out
    assert login(site.test_client(), address="192.0.2.1").status_code == 302


def test_many_addresses_are_slowed_on_the_account_a_fresh_address_is_not(site, fleet_db):
    client = site.test_client()
    started = time.time()  # before 203.0.113.0's failure
    for n in range(8):  # a botnet: one wrong guess from each of 8 addresses
        assert failures(client, 1, address=f"203.0.113.{n}") == [401]
    # past the limit (5) an address that failed on the account must wait before its next try
    again = login(client, "admin", "wrong password!", "203.0.113.0")
    # a growing gap: 8 failures, limit 5 -> 2^3 = 8 s after that address's failure
    assert again.status_code == 429
    assert 8 - (time.time() - started) <= int(again.headers["Retry-After"]) <= 8
    # the wait over (moved back in time), that address may try again
    with fleet_db() as s:
        for row in s.scalars(select(LoginFailure).where(LoginFailure.address == "203.0.113.0")):
            row.at -= 9
        s.commit()
    assert failures(client, 1, address="203.0.113.0") == [401]
    # and the real admin from an address with no failures logs in at once
    assert login(site.test_client(), address="192.0.2.1").status_code == 302


def test_one_address_trying_many_accounts_is_stopped(site):
    client = site.test_client()
    statuses = [login(client, f"user{n}", "wrong password!", "198.51.100.9").status_code
                for n in range(21)]
    assert statuses == [401] * 20 + [429]  # 4 × the per-account limit
    assert login(client, "operator", PASSWORD, "198.51.100.9").status_code == 429


def test_a_success_clears_that_addresses_own_typos(site, fleet_db):
    client = site.test_client()
    assert failures(client, 4, address="192.0.2.1") == [401] * 4
    assert login(client, address="192.0.2.1").status_code == 302
    with fleet_db() as s:
        assert s.scalars(select(LoginFailure)).all() == []


def test_the_forwarded_address_counts_only_behind_a_configured_proxy(fleet_config, api):
    def app_with(proxies):
        config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                      web={"trusted_proxies": proxies})
        return create_app(config)

    direct, proxied = app_with(0), app_with(1)
    try:
        # without a configured proxy the header is anyone's to forge: ignored
        client = direct.test_client()
        for n in range(5):
            response = client.post("/login", data={
                "csrf_token": csrf_of(client), "username": "operator",
                "password": "wrong password!"}, headers={"X-Forwarded-For": f"10.0.0.{n}"},
                environ_base={"REMOTE_ADDR": "192.0.2.50"})
            assert response.status_code == 401
        assert login(client, "operator", PASSWORD, "192.0.2.50").status_code == 429
        # behind one proxy every client is the proxy's address, the header tells them apart
        client = proxied.test_client()
        for _ in range(5):
            response = client.post("/login", data={
                "csrf_token": csrf_of(client), "username": "health",
                "password": "wrong password!"}, headers={"X-Forwarded-For": "10.9.9.9"},
                environ_base={"REMOTE_ADDR": "127.0.0.1"})
            assert response.status_code == 401
        response = client.post("/login", data={
            "csrf_token": csrf_of(client), "username": "health", "password": PASSWORD},
            headers={"X-Forwarded-For": "10.1.1.1"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert response.status_code == 302
    finally:
        for app in (direct, proxied):
            app.extensions["greengate"].engine.dispose()

