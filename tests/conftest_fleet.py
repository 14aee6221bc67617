"""Fleet fixtures: a migrated database on SQLite and PostgreSQL (tests/conftest_db.py
gives `database_url`, parametrized over both), the app, an admin and its token."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fleet import auth, migrate
from fleet.app import create_app
from fleet.config import load
from fleet.db import make_engine, make_sessions


@pytest.fixture
def fleet_config(tmp_path, database_url):
    """A fleet config on a fresh, migrated database (no MQTT)."""
    config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                       "database_url": database_url,
                                       "deployments": ["test"]})
    engine = make_engine(config.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    return config


@pytest.fixture
def fleet_db(fleet_config):
    """A session factory on the fleet's database."""
    engine = make_engine(fleet_config.database_url)
    yield make_sessions(engine)
    engine.dispose()


@pytest.fixture
def fleet_app(fleet_config):
    app = create_app(fleet_config)
    app.testing = True
    yield app
    app.extensions["greengate"].engine.dispose()


@pytest.fixture
def api(fleet_app, fleet_db):
    """api.client (Flask test client), api.admin / api.operator / api.officer tokens
    as headers, api.sessions."""
    tokens = {}
    with fleet_db() as session:
        for name, role in (("admin", "admin"), ("operator", "operator"),
                           ("officer", "district_officer"), ("health", "health_official")):
            user = auth.create_user(session, name, "correct horse battery", role)
            session.flush()
            tokens[name] = {"Authorization": f"Bearer {auth.create_token(session, user, 'tests')}"}
        session.commit()
    return SimpleNamespace(client=fleet_app.test_client(), sessions=fleet_db, **tokens)


def assign_officer_a_district(sessions, code="q1"):
    """The `api` fixture's officer with a district (a district officer without one gets 403
    everywhere: tests/test_authorisation.py)."""
    from sqlalchemy import select, update

    from fleet.models import District, User
    with sessions() as session:
        district = session.scalar(select(District).where(District.code == code))
        if district is None:
            district = District(code=code, name=code)
            session.add(district)
            session.flush()
        session.execute(update(User).where(User.username == "officer")
                        .values(district_id=district.id))
        session.commit()


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) on a free port; .port, .messages: [(envelope
    recipients, message)], parsed with email.policy.default so UTF-8 headers (the
    reports' Vietnamese subjects) come back decoded."""
    import socket
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((list(envelope.rcpt_tos),
                                  message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    handler = Handler()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        handler.port = s.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    yield handler
    controller.stop()
