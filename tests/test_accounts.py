"""Accounts and API tokens (fleet/accounts.py) through the CLI, the API and the dashboard,
on SQLite and PostgreSQL; the dashboard's pages in a real Chromium."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select as io_select
import subprocess
import sys
import termios
import time

import pytest
from sqlalchemy import select

from fleet import auth, migrate
from fleet.cli import main
from fleet.db import make_engine, make_sessions
from fleet.models import ApiToken, AuditLog, District, User

PASSWORD = "correct horse battery"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the CLI ------------------------------------------------------------------------------
@pytest.fixture
def cli(database_url, tmp_path, monkeypatch):
    env = {"GREENGATE_FLEET_DATABASE_URL": database_url,
           "GREENGATE_FLEET_DATA_DIR": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    sessions = make_sessions(engine)
    with sessions() as s:
        s.add(District(code="q1", name="Quận 1"))
        s.commit()
    yield sessions, {**os.environ, **env}
    engine.dispose()


def run(monkeypatch, capsys, *argv, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_account_lifecycle_refuses_in_one_line(cli, monkeypatch, capsys):
    sessions, _env = cli
    ok = run(monkeypatch, capsys, "user", "create", "lan", "--role", "operator",
             "--password-stdin", stdin=PASSWORD + "\n")
    assert ok == (0, "user lan (operator) created\n", "")
    status, out, err = run(monkeypatch, capsys, "user", "create", "lan", "--role", "admin",
                           "--password-stdin", stdin="another long password\n")
    assert status == 2 and out == ""
    assert err == ("greengate-fleet: user 'lan' exists already; change it with "
                   "`greengate-fleet user set` or `user passwd`\n")
    assert "argon2" not in err and "Traceback" not in err
    status, _, err = run(monkeypatch, capsys, "user", "create", "mai", "--role",
                         "district_officer", "--password-stdin", stdin=PASSWORD + "\n")
    assert status == 2 and "needs a district" in err
    assert run(monkeypatch, capsys, "user", "create", "mai", "--role", "district_officer",
               "--district", "q1", "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    assert run(monkeypatch, capsys, "user", "add", "root", "--role", "admin",
               "--password-stdin", stdin=PASSWORD + "\n")[0] == 0

    status, out, _ = run(monkeypatch, capsys, "user", "list")
    assert status == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["USER", "ROLE", "DISTRICT", "STATE", "CREATED"]
    assert [r[:4] for r in rows[1:]] == [["lan", "operator", "-", "enabled"],
                                         ["mai", "district_officer", "q1", "enabled"],
                                         ["root", "admin", "-", "enabled"]]

    status, token, _ = run(monkeypatch, capsys, "token", "create", "lan", "--name", "ci")
    token = token.strip()
    with sessions() as s:
        assert auth.user_for_token(s, token).username == "lan"
        s.commit()
    status, out, _ = run(monkeypatch, capsys, "token", "list")
    assert token not in out and auth.hash_token(token) not in out
    assert out.splitlines()[1].split()[:3] == ["1", "ci", "lan"]
    assert run(monkeypatch, capsys, "token", "revoke", "1")[1] == "token 1 (ci) of lan revoked\n"
    with sessions() as s:
        assert auth.user_for_token(s, token) is None
    assert run(monkeypatch, capsys, "token", "revoke", "99")[0] == 2

    assert run(monkeypatch, capsys, "user", "set", "lan", "--role", "district_officer",
               "--district", "q1")[1] == "user lan: district_officer, district q1\n"
    status, _, err = run(monkeypatch, capsys, "user", "set", "lan", "--no-district")
    assert status == 2 and "needs a district" in err
    assert run(monkeypatch, capsys, "user", "disable", "lan")[0] == 0
    assert run(monkeypatch, capsys, "user", "enable", "lan")[0] == 0
    assert run(monkeypatch, capsys, "user", "passwd", "lan", "--password-stdin",
               stdin="a brand new password\n")[0] == 0
    status, _, err = run(monkeypatch, capsys, "user", "passwd", "lan", "--password-stdin")
    assert status == 2 and err == ("greengate-fleet: no password on stdin (--password-stdin "
                                   "reads one line)\n")
    # the fleet keeps one enabled admin
    status, _, err = run(monkeypatch, capsys, "user", "disable", "root")
    assert status == 2 and "only enabled admin" in err
    status, _, err = run(monkeypatch, capsys, "user", "set", "root", "--role", "operator")
    assert status == 2 and "only enabled admin" in err
    assert run(monkeypatch, capsys, "token", "create", "lan", "--name", "two")[0] == 0
    assert run(monkeypatch, capsys, "user", "delete", "lan")[1] == \
        "user lan deleted, with 2 token(s)\n"
    assert run(monkeypatch, capsys, "user", "delete", "lan")[0] == 2

    with sessions() as s:
        user = s.scalar(select(User).where(User.username == "mai"))
        assert auth.check_password(user, PASSWORD)
        assert s.scalar(select(User).where(User.username == "lan")) is None
        assert s.scalars(select(ApiToken)).all() == []
        audit = [(a.actor, a.action, a.target) for a in
                 s.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert audit == [("cli", "user.create", "lan"), ("cli", "user.create", "mai"),
                     ("cli", "user.create", "root"), ("cli", "token.create", "lan"),
                     ("cli", "token.revoke", "lan"), ("cli", "user.update", "lan"),
                     ("cli", "user.disable", "lan"), ("cli", "user.enable", "lan"),
                     ("cli", "user.password", "lan"), ("cli", "token.create", "lan"),
                     ("cli", "user.delete", "lan")]


def fleet_cli(env, *argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "fleet.cli", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_cli_password_prompt_closed_stdin_gives_one_line_and_status_2(cli):
    _sessions, env = cli
    # a new session: no controlling terminal, so the prompt falls back to the closed stdin
    done = fleet_cli(env, "user", "create", "lan", "--role", "operator",
                     stdin=subprocess.DEVNULL, start_new_session=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "greengate-fleet: no password given (stdin is closed or not a terminal): type it at "
        "a terminal, or pipe one line with --password-stdin\n")
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr


def _on_a_terminal(env, argv, answers):
    """Run the CLI with a pseudo-terminal as its controlling terminal; type `answers` at
    each prompt. Returns (exit status, what the terminal showed)."""
    leader, follower = pty.openpty()

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", *argv], env=env, cwd=ROOT,
                            stdin=follower, stdout=follower, stderr=follower,
                            start_new_session=True, preexec_fn=controlling_tty)
    os.close(follower)
    shown, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not io_select.select([leader], [], [], deadline - time.monotonic())[0]:
            break  # a hung prompt fails the assertions below, not the whole run
        try:
            chunk = os.read(leader, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if pending and chunk.endswith(b": "):  # a prompt, waiting
            os.write(leader, pending.pop(0).encode() + b"\n")
    os.close(leader)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(30), shown.decode(errors="replace")


def test_cli_password_prompt_asks_twice(cli):
    sessions, env = cli
    status, shown = _on_a_terminal(env, ["user", "create", "lan", "--role", "operator"],
                                   [PASSWORD, PASSWORD + " typo"])
    assert status == 2 and "password for lan:" in shown and "the same again:" in shown
    assert "the two passwords differ; nothing changed" in shown
    status, shown = _on_a_terminal(env, ["user", "create", "lan", "--role", "operator"],
                                   [PASSWORD, PASSWORD])
    assert status == 0 and "user lan (operator) created" in shown, shown
    assert PASSWORD not in shown  # not echoed
    with sessions() as s:
        assert auth.check_password(s.scalar(select(User).where(User.username == "lan")),
                                   PASSWORD)


# --- the API ------------------------------------------------------------------------------
def test_api_user_and_token_lifecycle(api):
    c, admin = api.client, api.admin
    with api.sessions() as s:
        s.add(District(code="q1", name="Quận 1"))
        s.commit()

    def send(method, url, body=None, status=200, headers=admin):
        r = c.open(url, method=method, json=body, headers=headers)
        assert r.status_code == status, (url, r.status_code, r.get_json())
        return r.get_json()

    created = send("POST", "/api/v1/users", {"username": "lan", "password": PASSWORD,
                                             "role": "operator"}, 201)
    assert created == {"username": "lan", "role": "operator", "district": None, "ward": None,
                       "organisation": None, "disabled": False, "created_at": created["created_at"]}
    assert "exists already" in send("POST", "/api/v1/users", {
        "username": "lan", "password": PASSWORD, "role": "admin"}, 409)["message"]
    assert "needs a district" in send("POST", "/api/v1/users", {
        "username": "x", "password": PASSWORD, "role": "district_officer"}, 422)["message"]
    assert "10 characters" in send("POST", "/api/v1/users", {
        "username": "x", "password": "short", "role": "operator"}, 422)["message"]
    assert [u["username"] for u in send("GET", "/api/v1/users")["items"]] == [
        "admin", "health", "lan", "officer", "operator"]

    made = send("POST", "/api/v1/tokens", {"user": "lan", "name": "ci"}, 201)
    lan = {"Authorization": f"Bearer {made['token']}"}
    assert made["user"] == "lan" and made["name"] == "ci" and made["revoked_at"] is None
    send("GET", "/api/v1/districts", headers=lan)
    listed = send("GET", "/api/v1/tokens?user=lan")["items"]
    assert listed == [{k: v for k, v in made.items() if k != "token"} | {
        "last_used": listed[0]["last_used"]}]
    assert listed[0]["last_used"] is not None
    assert made["token"] not in str(send("GET", "/api/v1/tokens"))

    # a revoked token is refused at its very next request
    send("DELETE", f"/api/v1/tokens/{made['id']}")
    assert send("GET", "/api/v1/districts", headers=lan, status=401)["error"] == "unauthorized"
    assert send("GET", "/api/v1/tokens?revoked=true")["items"][0]["id"] == made["id"]
    send("DELETE", "/api/v1/tokens/999999", status=404)

    second = {"Authorization": "Bearer " + send("POST", "/api/v1/tokens",
                                                {"user": "lan", "name": "two"}, 201)["token"]}
    send("PATCH", "/api/v1/users/lan", {"disabled": True})
    send("GET", "/api/v1/districts", headers=second, status=401)
    send("PATCH", "/api/v1/users/lan", {"disabled": False})
    send("GET", "/api/v1/districts", headers=second)

    changed = send("PATCH", "/api/v1/users/lan", {"role": "district_officer", "district": "q1"})
    assert (changed["role"], changed["district"]) == ("district_officer", "q1")
    send("PATCH", "/api/v1/users/lan", {"district": None}, 422)
    send("PATCH", "/api/v1/users/lan", {"password": "a brand new password"})
    send("PATCH", "/api/v1/users/lan", {}, 422)
    send("PATCH", "/api/v1/users/lan", {"disabled": "yes"}, 422)
    assert "your own account" in send("PATCH", "/api/v1/users/admin", {"disabled": True},
                                      409)["message"]
    assert "only enabled admin" in send("PATCH", "/api/v1/users/admin",
                                        {"role": "operator"}, 409)["message"]
    with api.sessions() as s:
        assert auth.check_password(s.scalar(select(User).where(User.username == "lan")),
                                   "a brand new password")

    assert send("DELETE", "/api/v1/users/lan") == {"deleted": "lan", "tokens_deleted": 2}
    send("GET", "/api/v1/districts", headers=second, status=401)
    send("GET", "/api/v1/users/lan", status=404)
    with api.sessions() as s:
        audit = [(a.actor, a.action, a.target) for a in
                 s.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert audit == [("admin", "user.create", "lan"), ("admin", "token.create", "lan"),
                     ("admin", "token.revoke", "lan"), ("admin", "token.create", "lan"),
                     ("admin", "user.disable", "lan"), ("admin", "user.enable", "lan"),
                     ("admin", "user.update", "lan"), ("admin", "user.password", "lan"),
                     ("admin", "user.delete", "lan")]


# --- the dashboard ------------------------------------------------------------------------
def test_users_and_tokens_pages_in_chromium(dashboard, page):
    with dashboard.sessions() as s:
        s.add(District(code="q1", name="Quận 1"))
        lan = auth.create_user(s, "lan", PASSWORD, "operator")
        s.flush()
        auth.create_token(s, lan, "nightly export")
        s.commit()
    dashboard.login(page, "admin")
    page.click("nav.main a:has-text('Users')")
    page.wait_for_url(re.compile(r".*/users$"))
    assert page.locator("h1").inner_text() == "Users"

    # a new account: the password twice
    page.fill("section.user-create input[name=username]", "mai")
    page.select_option("section.user-create select[name=role]", "district_officer")
    page.select_option("section.user-create select[name=district]", "q1")
    page.fill("section.user-create input[name=password]", PASSWORD)
    page.fill("section.user-create input[name=password2]", PASSWORD)
    page.click("section.user-create button[type=submit]")
    assert page.locator("h1").inner_text() == "Account created"
    page.click("text=Back")

    # disable: a confirmation step first, nothing changes before it
    row = page.locator("tr[data-user=lan]")
    row.locator("button[value=disable]").click()
    assert page.locator("h1").inner_text() == "Confirm the change"
    assert "Disable the account lan." in page.locator(".confirm-summary").inner_text()
    assert "1 API tokens" in page.locator("main").inner_text()
    with dashboard.sessions() as s:
        assert not s.scalar(select(User).where(User.username == "lan")).disabled
    page.click("form.confirm button[type=submit]")
    assert page.locator("h1").inner_text() == "Done"
    page.goto(dashboard.url + "/users")
    assert page.locator("tr[data-user=lan] td.state").inner_text() == "disabled"

    # revoke the token from the tokens page
    page.goto(dashboard.url + "/tokens")
    token_row = page.locator("tr.token-row", has_text="nightly export")
    assert "lan" in token_row.inner_text() and "never" in token_row.inner_text()
    token_row.locator("button[value=revoke]").click()
    assert "Revoke the token nightly export of lan." in \
        page.locator(".confirm-summary").inner_text()
    page.click("form.confirm button[type=submit]")
    page.goto(dashboard.url + "/tokens")
    assert page.locator("tr.token-row.revoked td.revoked-at").inner_text() != "–"

    # a refused change says why and changes nothing
    page.goto(dashboard.url + "/users")
    page.locator("tr[data-user=admin] button[value=delete]").click()
    assert "you cannot delete your own account" in page.locator("p.error").inner_text()

    with dashboard.sessions() as s:
        mai = s.scalar(select(User).where(User.username == "mai"))
        assert mai.role == "district_officer" and mai.district_id is not None
        assert [a.action for a in s.scalars(select(AuditLog).where(
            AuditLog.actor == "admin").order_by(AuditLog.id))] == [
            "user.login", "user.create", "user.disable", "token.revoke"]


def test_users_page_speaks_vietnamese(dashboard, page):
    dashboard.login(page, "admin", lang="vi")
    page.goto(dashboard.url + "/users")
    text = page.locator("main").inner_text()
    for english in ("New account", "Reset a password", "Disable", "Delete", "User name"):
        assert english not in text, english
    assert page.locator("h1").inner_text() == "Người dùng"
    page.locator("tr[data-user=admin] button[value=delete]").click()  # a refusal, translated
    assert page.locator("p.error").inner_text() == "bạn không thể xóa tài khoản của chính mình"
