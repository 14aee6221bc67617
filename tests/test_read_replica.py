"""`[fleet] read_database_url` (docs/fleet.md#read-replica): the dashboard's and API's
read-only requests read a real PostgreSQL streaming replica (pg_basebackup -R of the
primary, on another port); writes, and who the caller is, go to the primary.

Replay on the replica is paused to tell the two apart: what the primary has and the
replica has not yet shows where each request went.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from sqlalchemy import select

from fleet import auth, migrate
from fleet.app import create_app
from fleet.config import load
from fleet.db import make_engine, make_sessions
from fleet.models import District, Kiosk
from tests.conftest_db import selected_backends
from tests.databases import SUPERUSER
from tests.ingestkit import wait_for

REPLICATION = {"wal_level": "replica", "max_wal_senders": "4", "hot_standby": "on"}


@pytest.fixture
def primary_and_replica(make_postgres, tmp_path):
    if "postgresql" not in selected_backends():
        pytest.skip("GREENGATE_TEST_DB excludes PostgreSQL")
    primary = make_postgres(settings=REPLICATION)
    name = primary.create_database("fleet")
    engine = make_engine(primary.url(name))
    migrate.upgrade(engine)
    engine.dispose()
    t0 = time.monotonic()
    replica = make_postgres(start=False, settings=REPLICATION)
    replica.password = primary.password  # the roles are the primary's, copied
    proc = replica._spawn([str(replica.bindir / "pg_basebackup"), "-D", str(replica.data),  # noqa: SLF001
                           "-R", "-X", "stream", "--no-sync", "-c", "fast", "-h", str(primary.socket_dir),
                           "-p", str(primary.port), "-U", SUPERUSER],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    replica.start()
    made = time.monotonic() - t0
    print(f"streaming replica made and started in {made:.2f} s")  # noqa: T201
    return primary, replica, name


def pause(replica, paused: bool) -> None:
    with replica.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def test_reads_go_to_the_replica_and_writes_to_the_primary(primary_and_replica, tmp_path):
    primary, replica, name = primary_and_replica
    config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                       "database_url": primary.url(name),
                                       "read_database_url": replica.url(name),
                                       "deployments": ["test"]})
    sessions = make_sessions(make_engine(config.database_url))
    with sessions() as s:
        admin = auth.create_user(s, "admin", "correct horse battery", "admin")
        s.flush()
        token = auth.create_token(s, admin, "tests")
        s.commit()
    app = create_app(config)
    web = app.test_client()
    fleet = app.extensions["greengate"]
    assert fleet.read_engine.url.port == replica.port != fleet.engine.url.port
    try:
        districts = lambda: [d["code"] for d in web.get(  # noqa: E731
            "/api/v1/districts", headers={"Authorization": f"Bearer {token}"}).json["items"]]
        assert districts() == []

        page = app.test_client()  # a dashboard login: read and written on the primary
        html = page.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        assert page.post("/login", data={"csrf_token": csrf, "username": "admin",
                                         "password": "correct horse battery"}).status_code == 302

        pause(replica, True)
        with sessions() as s:  # a kiosk appears on the primary ...
            s.add(Kiosk(id="k-on-primary", state="never_seen", detail="", session=0))
            s.commit()
        kiosks_page = lambda: page.get("/kiosks?lang=en").get_data(as_text=True)  # noqa: E731
        assert "k-on-primary" not in kiosks_page()  # ... the page reads the replica
        # a token made on the primary now works at once: who calls is read on the primary
        with sessions() as s:
            fresh = auth.create_token(s, s.get(type(admin), admin.id), "fresh")
            s.commit()
        bearer = {"Authorization": f"Bearer {fresh}"}
        made = web.post("/api/v1/districts", json={"code": "q1", "name": "Quận 1"},
                        headers=bearer)
        assert made.status_code == 201, made.json  # the write went to the primary
        assert web.get("/api/v1/districts", headers=bearer).json["items"] == []  # replica
        with sessions() as s:  # the primary has it
            assert s.scalars(select(District.code)).all() == ["q1"]

        pause(replica, False)
        t0 = time.monotonic()
        wait_for(lambda: districts() == ["q1"], 10, "the replica caught up")
        assert "k-on-primary" in kiosks_page()
        print(f"replica lag after resume: {time.monotonic() - t0:.3f} s")  # noqa: T201

        # and a write never goes to the replica, even if a GET tried (hot standby: refused)
        with app.test_request_context("/api/v1/districts", method="GET"):
            from fleet.app import db, primary_db
            assert db().get_bind().url.port == replica.port
            assert primary_db().get_bind().url.port == primary.port
    finally:
        fleet.engine.dispose()
        fleet.read_engine.dispose()
        sessions.kw["bind"].dispose()


def test_without_a_replica_reads_use_the_primary(tmp_path):
    config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                       "deployments": ["test"]})
    assert config.read_database_url == config.database_url
    app = create_app(config)
    assert app.extensions["greengate"].read_sessions is None
    with app.test_request_context("/", method="GET"):
        from fleet.app import db, primary_db
        assert db() is primary_db()
    app.extensions["greengate"].engine.dispose()


def test_a_get_that_writes_through_the_replica_session_fails_loudly(tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"), "database_url": url,
                                       "read_database_url": url, "deployments": ["test"]})
    app = create_app(config)
    with app.test_request_context("/", method="GET"):
        from fleet.app import db
        db().add(District(code="x", name="x"))
        with pytest.raises(RuntimeError, match="read-only request"):
            db().flush()
    app.extensions["greengate"].engine.dispose()
    app.extensions["greengate"].read_engine.dispose()
