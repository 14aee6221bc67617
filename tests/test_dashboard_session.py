"""Dashboard sessions (fleet/web/session_views.py, fleet/auth.py): argon2 passwords,
login limits, CSRF on every form and on API writes made with the login cookie, the
language, no open redirect. The first test drives a real Chromium."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from fleet import auth
from fleet.models import AuditLog, User

PASSWORD = "correct horse battery"


def test_chromium_logs_in_in_vietnamese_by_default_and_switches_to_english(dashboard, chromium):
    context = chromium.new_context()
    page = context.new_page()
    page.goto(dashboard.url + "/")
    assert "/login" in page.url  # not logged in: to the login page, and back after
    assert page.locator("h1").inner_text() == "Đăng nhập"
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    assert page.locator("p.error").inner_text() == "Sai tên đăng nhập hoặc mật khẩu."
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(dashboard.url + "/")
    assert "operator" in page.locator(".user").inner_text()
    page.click("a[href='?lang=en']")
    page.wait_for_url(re.compile(r".*lang=en$"))
    assert page.locator("h1").inner_text() == "Kiosks"
    page.goto(dashboard.url + "/")  # remembered for the session
    assert page.locator("h1").inner_text() == "Kiosks"
    cookie = next(c for c in context.cookies() if c["name"] == "greengate")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("button:has-text('Log out')")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(dashboard.url + "/")
    assert "/login" in page.url
    context.close()


@pytest.fixture
def web(fleet_app, fleet_db):
    with fleet_db() as session:
        auth.create_user(session, "operator", PASSWORD, "operator")
        session.commit()
    fleet_app.config["TESTING"] = True
    return fleet_app.test_client()


def csrf_of(client, path="/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, password=PASSWORD, username="operator", next_=""):
    token = csrf_of(client)
    return client.post("/login", data={"csrf_token": token, "username": username,
                                       "password": password, "next": next_})


def test_passwords_are_argon2_and_old_hashes_are_upgraded(fleet_db):
    from werkzeug.security import generate_password_hash
    with fleet_db() as session:
        user = auth.create_user(session, "lan", PASSWORD, "operator")
        assert user.password_hash.startswith("$argon2id$")
        assert auth.check_password(user, PASSWORD) and not auth.check_password(user, "nope nope!")
        user.password_hash = generate_password_hash(PASSWORD)  # an account from before
        assert auth.check_password(user, PASSWORD)
        assert user.password_hash.startswith("$argon2id$")


def test_forms_without_the_csrf_token_are_refused(web):
    assert login(web).status_code == 302
    response = web.post("/logout")  # no token
    assert response.status_code == 403 and "CSRF" in response.get_data(as_text=True)
    token = csrf_of(web, "/")
    assert web.post("/logout", data={"csrf_token": token}).status_code == 302
    # the login form itself carries a token too
    assert web.post("/login", data={"username": "operator", "password": PASSWORD}
                    ).status_code == 403


def test_api_writes_with_the_login_cookie_need_the_csrf_header(web):
    login(web)
    body = {"code": "q9", "name": "Quận 9"}
    response = web.post("/api/v1/districts", json=body)
    assert response.status_code == 403 and "CSRF" in response.get_json()["message"]
    token = csrf_of(web, "/")
    assert web.post("/api/v1/districts", json=body,
                    headers={"X-CSRF-Token": token}).status_code == 201
    assert web.get("/api/v1/districts").status_code == 200  # reading needs no token


def test_failed_logins_are_limited_per_account(web, fleet_db):
    for _ in range(5):
        assert login(web, password="wrong password!").status_code == 401
    response = login(web)  # from this address, even the right password, for a while
    assert response.status_code == 429 and 800 < int(response.headers["Retry-After"]) <= 900
    with fleet_db() as session:
        assert session.scalars(select(AuditLog.action)).all() == []


def test_login_is_audited_and_next_stays_on_this_site(web, fleet_db):
    assert login(web, next_="/?lang=en").headers["Location"] == "/?lang=en"
    web.post("/logout", data={"csrf_token": csrf_of(web, "/")})
    for evil in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        assert login(web, next_=evil).headers["Location"] == "/"
        web.post("/logout", data={"csrf_token": csrf_of(web, "/")})
    with fleet_db() as session:
        assert session.scalars(select(AuditLog.action)).all() == ["user.login"] * 4
        assert session.scalar(select(User)).password_hash.startswith("$argon2id$")
