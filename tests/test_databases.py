"""The database fixtures are real: SQLite files and a real PostgreSQL server (tests/databases.py,
tests/conftest_db.py), driven through SQLAlchemy 2.x Core the way the fleet server uses them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import (Boolean, Column, Integer, MetaData, String, Table, create_engine,
                        func, inspect, insert, select, text)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from tests.conftest_db import selected_backends
from tests.databases import INSTALL_HINT, PostgresMissing, find_pg_bindir, reap_stale_clusters

REPO = Path(__file__).resolve().parent.parent

metadata = MetaData()
scans = Table(
    "scans", metadata,
    Column("id", Integer, primary_key=True),
    Column("scan_id", String(64), nullable=False, unique=True),
    Column("holder", String(200), nullable=False),
    Column("ok", Boolean, nullable=False),
)
ROWS = [
    {"scan_id": "k1-0001", "holder": "Trần-Phạm Thị Xuân Hồng", "ok": True},
    {"scan_id": "k1-0002", "holder": "Nguyễn Văn Ánh", "ok": False},
    {"scan_id": "k2-0001", "holder": "Ελένη Παπαδοπούλου", "ok": True},
]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an unreaped zombie holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(scans)).scalar_one()


@pytest.fixture
def engine(database_url):
    engine = create_engine(database_url, pool_pre_ping=True)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


# --- both backends ---------------------------------------------------------------
_seen_urls: set[str] = set()


def test_each_test_gets_a_new_empty_database(database):
    assert database.url not in _seen_urls
    _seen_urls.add(database.url)
    if database.backend == "sqlite":
        assert not os.path.exists(database.name)  # not even the file yet
    else:
        assert database.name in database.cluster.databases()
    engine = create_engine(database.url)
    try:
        assert inspect(engine).get_table_names() == []
        metadata.create_all(engine)  # leaves a table behind: the next test must not see it
        assert inspect(engine).get_table_names() == ["scans"]
    finally:
        engine.dispose()


def test_core_insert_select_and_unique_constraint(engine):
    with engine.begin() as conn:
        ids = conn.execute(insert(scans).returning(scans.c.id), ROWS).scalars().all()
    assert len(ids) == 3 and len(set(ids)) == 3
    with engine.connect() as conn:
        got = conn.execute(select(scans.c.scan_id, scans.c.holder, scans.c.ok)
                           .order_by(scans.c.scan_id)).mappings().all()
        assert [dict(r) for r in got] == ROWS  # Unicode and booleans round-trip
        only_bad = conn.execute(select(scans.c.scan_id).where(scans.c.ok.is_(False))).all()
        assert only_bad == [("k1-0002",)]
    # a duplicate scan id is refused by the database (idempotent ingest relies on it) ...
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(insert(scans), {"scan_id": "k1-0001", "holder": "x", "ok": True})
    # ... and the connection pool stays usable afterwards
    assert count(engine) == 3


def test_rolled_back_transaction_leaves_nothing(engine):
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(insert(scans), ROWS)
        assert conn.execute(select(func.count()).select_from(scans)).scalar_one() == 3
        trans.rollback()
    assert count(engine) == 0

    with pytest.raises(RuntimeError, match="ingest failed"):
        with engine.begin() as conn:
            conn.execute(insert(scans), ROWS[:1])
            raise RuntimeError("ingest failed")
    assert count(engine) == 0

    with engine.begin() as conn:  # and a committed one stays
        conn.execute(insert(scans), ROWS[:1])
    assert count(engine) == 1


def test_two_connections_see_only_committed_data(database, engine):
    other = create_engine(database.url)  # a second engine: its own pool, own connections
    try:
        with engine.connect() as writer:
            writer.begin()
            writer.execute(insert(scans), ROWS)
            assert count(other) == 0  # uncommitted: invisible to the other connection
            if database.backend == "postgresql":
                with other.connect() as reader:
                    pids = {writer.execute(text("SELECT pg_backend_pid()")).scalar_one(),
                            reader.execute(text("SELECT pg_backend_pid()")).scalar_one()}
                assert len(pids) == 2  # two server sessions
            writer.commit()
        assert count(other) == 3
        with other.begin() as conn:
            conn.execute(scans.delete().where(scans.c.scan_id == "k2-0001"))
        assert count(engine) == 2
    finally:
        other.dispose()


def test_backend_is_what_it_claims(database):
    engine = create_engine(database.url)
    try:
        with engine.connect() as conn:
            assert conn.dialect.name == database.backend
            if database.backend == "sqlite":
                assert re.fullmatch(r"3\.\d+\.\d+",
                                    conn.execute(text("SELECT sqlite_version()")).scalar_one())
                conn.execute(text("CREATE TABLE t (x INTEGER)"))
                conn.commit()
                assert os.path.getsize(database.name) > 0  # a real file at the given path
                return
            cluster = database.cluster
            assert conn.dialect.driver == "psycopg"  # psycopg 3
            version = conn.execute(text("SHOW server_version")).scalar_one()
            assert version.split()[0] == cluster.version
            assert int(version.split(".")[0]) >= 13
            assert conn.execute(text("SELECT version()")).scalar_one().startswith("PostgreSQL ")
            row = conn.execute(text(
                "SELECT current_database(), current_user, inet_server_port(), rolsuper "
                "FROM pg_roles WHERE rolname = current_user")).one()
            # the fresh database, as its owner (not a superuser), over TCP to this cluster
            assert tuple(row) == (database.name, "greengate", cluster.port, False)
            assert conn.execute(text("SHOW fsync")).scalar_one() == "off"  # test speed only
            with pytest.raises(ProgrammingError, match="sqlite_version"):
                conn.execute(text("SELECT sqlite_version()"))
    finally:
        engine.dispose()


# --- PostgreSQL only -------------------------------------------------------------
def test_postgres_restart_keeps_data_on_same_port(postgres):
    name = postgres.create_database()
    engine = create_engine(postgres.url(name), pool_pre_ping=True)  # as fleet/db.py does
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(scans), ROWS[:2])
        port, pid, starts = postgres.port, postgres.pid, postgres.starts
        pending = engine.connect()  # a transaction in flight while the server goes down
        pending.begin()
        pending.execute(insert(scans), ROWS[2:])

        postgres.stop()
        assert not postgres.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres.conninfo("postgres"), connect_timeout=2)
        with pytest.raises(OperationalError):
            with engine.connect() as conn:
                conn.execute(select(1))

        postgres.start()
        assert (postgres.port, postgres.starts) == (port, starts + 1)
        assert postgres.pid != pid
        # the same engine reconnects by itself (pool_pre_ping); the in-flight
        # transaction was rolled back by the fast shutdown
        with engine.connect() as conn:
            got = conn.execute(select(scans.c.scan_id).order_by(scans.c.scan_id)).scalars()
            assert list(got) == ["k1-0001", "k1-0002"]
        pending.invalidate()
        pending.close()
    finally:
        engine.dispose()
        postgres.start()
        postgres.drop_database(name)
    assert name not in postgres.databases()


def test_killed_postgres_recovers_committed_data(make_postgres):
    # a taken port: start fails with a clear error that includes the server log
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    cluster = make_postgres(start=False, port=blocker.getsockname()[1])
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code.*server log:.*"
                                               r"Address already in use"):
            cluster.start()
    finally:
        blocker.close()
    cluster.start()

    name = cluster.create_database()
    engine = create_engine(cluster.url(name), pool_pre_ping=True)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(scans), ROWS[:2])
        pending = engine.connect()
        pending.begin()
        pending.execute(insert(scans), ROWS[2:])
        postmaster = cluster.pid
        with cluster.connect() as admin:  # every server process, backends included
            pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity")]
        assert len(pids) >= 3

        cluster.kill()
        assert [p for p in [postmaster, *pids] if alive(p)] == []
        pending.invalidate()
        pending.close()

        cluster.start()
        assert "not properly shut down; automatic recovery" in cluster.log()
        with engine.connect() as conn:
            got = conn.execute(select(scans.c.scan_id).order_by(scans.c.scan_id)).scalars()
            assert list(got) == ["k1-0001", "k1-0002"]
    finally:
        engine.dispose()


def test_postgres_goes_away_with_the_test_process():
    """A test run killed with SIGKILL (CI timeout) does not leave a PostgreSQL behind, and
    the next cluster made in the same place deletes the orphaned directory."""
    if "postgresql" not in selected_backends():
        pytest.skip("PostgreSQL deselected by GREENGATE_TEST_DB")
    script = textwrap.dedent("""
        import sys, time
        from tests.databases import PostgresCluster
        c = PostgresCluster().start()
        print(c.pid, c.dir, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    assert line, "the helper did not start a cluster"
    pid, directory = int(line.split()[0]), line.split()[1]
    try:
        assert alive(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the postmaster outlived the process that started it")
            time.sleep(0.05)
        assert os.path.isdir(directory)
        assert Path(directory) in reap_stale_clusters(Path(directory).parent)
        assert not os.path.exists(directory)
    finally:
        proc.stdout.close()
        subprocess.run(["rm", "-rf", directory], check=False)


# --- fixture behaviour -------------------------------------------------------------
def test_find_pg_bindir_honours_and_checks_the_override(monkeypatch, tmp_path):
    if "postgresql" not in selected_backends():
        pytest.skip("PostgreSQL deselected by GREENGATE_TEST_DB")
    real = find_pg_bindir()
    assert (real / "initdb").is_file() and (real / "postgres").is_file()
    monkeypatch.setenv("GREENGATE_PG_BINDIR", str(real))
    assert find_pg_bindir() == real
    monkeypatch.setenv("GREENGATE_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresMissing, match="bash scripts/setup.sh --with postgres"):
        find_pg_bindir()
    assert "bash scripts/setup.sh --with postgres" in INSTALL_HINT


def test_selected_backends():
    assert selected_backends("") == ("sqlite", "postgresql")
    assert selected_backends("both") == ("sqlite", "postgresql")
    assert selected_backends(" PostgreSQL ") == ("postgresql",)
    assert selected_backends("sqlite") == ("sqlite",)
    with pytest.raises(ValueError, match="not one of: sqlite, postgresql, both"):
        selected_backends("mysql")


def _run_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest on a one-test file using database_url, with only tests/conftest_db.py."""
    (tmp_path / "test_one.py").write_text(textwrap.dedent("""
        from sqlalchemy import create_engine, text
        def test_one(database_url):
            engine = create_engine(database_url)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
            engine.dispose()
    """))
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("GREENGATE_TEST_DB", "GREENGATE_PG_BINDIR", "PYTEST_ADDOPTS")}
    full_env.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest_db", "-p", "no:cacheprovider",
         "-rA", "test_one.py"], cwd=tmp_path, env=full_env, capture_output=True, text=True,
        timeout=120)


def test_missing_postgres_fails_with_the_install_command(tmp_path):
    result = _run_pytest(tmp_path, {"GREENGATE_PG_BINDIR": str(tmp_path / "nowhere")})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(r"PASSED test_one.py::test_one\[sqlite\]", out), out
    assert re.search(r"ERROR test_one.py::test_one\[postgresql\]", out), out
    assert "bash scripts/setup.sh --with postgres" in out
    assert "skipped" not in out


def test_greengate_test_db_restricts_the_backends(tmp_path):
    result = _run_pytest(tmp_path, {"GREENGATE_TEST_DB": "sqlite"})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "PASSED test_one.py::test_one[sqlite]" in out
    assert "test_one[postgresql]" not in out
    assert "databases: sqlite (GREENGATE_TEST_DB=sqlite)" in out
    assert "1 passed" in out

    result = _run_pytest(tmp_path, {"GREENGATE_TEST_DB": "mysql"})
    out = result.stdout + result.stderr
    assert result.returncode == 4, out  # usage error
    assert "GREENGATE_TEST_DB='mysql' is not one of: sqlite, postgresql, both" in out
