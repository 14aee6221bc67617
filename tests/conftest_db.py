"""Pytest fixtures for real databases: an SQLite file, or a database on a real PostgreSQL.

Registered from tests/conftest.py (pytest_plugins).

    def test_x(database_url): ...      # runs twice: test_x[sqlite], test_x[postgresql]
    def test_y(database): ...          # same, with .backend .url .name .cluster
    def test_z(postgres): ...          # the session's PostgresCluster (restartable)
    def test_w(make_postgres): ...     # private clusters, closed after the test

Every `database_url` is a fresh, empty database: sqlite:///<tmp_path>/fleet.sqlite, or
a new database on the session's PostgreSQL cluster (dropped after the test) reached as
the non-superuser role that owns it, over TCP with a password.

GREENGATE_TEST_DB=sqlite | postgresql | both (default) restricts the parametrization for
quick local runs; with `sqlite`, tests that need PostgreSQL itself are skipped and no
server is started. Missing PostgreSQL binaries fail the tests with the install command
(`bash scripts/setup.sh --with postgres`) instead of skipping them quietly.
"""

from __future__ import annotations

import os
import re
import secrets
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.databases import PostgresCluster, PostgresMissing, find_pg_bindir

BACKENDS = ("sqlite", "postgresql")
ENV = "GREENGATE_TEST_DB"


def selected_backends(value: str | None = None) -> tuple[str, ...]:
    """The backends GREENGATE_TEST_DB (or `value`) asks for; ValueError if unknown."""
    raw = os.environ.get(ENV, "") if value is None else value
    wanted = raw.strip().lower() or "both"
    if wanted == "both":
        return BACKENDS
    if wanted in BACKENDS:
        return (wanted,)
    raise ValueError(f"{ENV}={raw!r} is not one of: sqlite, postgresql, both")


try:
    _BACKENDS = selected_backends()
    _ENV_ERROR = None
except ValueError as exc:  # reported by pytest_configure as a usage error
    _BACKENDS, _ENV_ERROR = BACKENDS, str(exc)

_session_cluster: list[PostgresCluster] = []  # for the terminal summary


def pytest_configure(config):
    if _ENV_ERROR:
        raise pytest.UsageError(_ENV_ERROR)


def pytest_report_header(config):
    return f"databases: {', '.join(_BACKENDS)} ({ENV}={os.environ.get(ENV) or 'both'})"


def pytest_terminal_summary(terminalreporter):
    if not _session_cluster:
        return
    c = _session_cluster[0]
    made = (f"{len(c.created)} databases created (median "
            f"{statistics.median(c.created) * 1000:.0f} ms)" if c.created else "no databases")
    t = c.timings
    terminalreporter.write_line(
        f"PostgreSQL {c.version} test cluster ({c.bindir}): initdb "
        f"{t.get('initdb', 0):.2f} s, start {t.get('first start', 0):.2f} s, "
        f"{c.starts} start(s), {made}")


@dataclass
class FreshDatabase:
    backend: str                      # "sqlite" or "postgresql"
    url: str                          # SQLAlchemy URL
    name: str                         # SQLite file path or PostgreSQL database name
    cluster: PostgresCluster | None   # the PostgreSQL cluster (None for SQLite)


@pytest.fixture(scope="session")
def postgres_bindir() -> Path:
    """Directory of initdb/postgres (fails with the install command if missing)."""
    if "postgresql" not in _BACKENDS:
        pytest.skip(f"PostgreSQL deselected by {ENV}={os.environ.get(ENV)}")
    try:
        return find_pg_bindir()
    except PostgresMissing as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _new_cluster(bindir: Path, **options) -> PostgresCluster:
    try:
        return PostgresCluster(bindir=bindir, **options)
    except PostgresMissing as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def postgres(postgres_bindir):
    """The session's running PostgreSQL cluster. A test may stop/restart/kill it; the
    `database` fixture starts it again for the next test."""
    cluster = _new_cluster(postgres_bindir)
    try:
        cluster.start()
        _session_cluster.append(cluster)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def make_postgres(postgres_bindir):
    """make_postgres(start=True, **PostgresCluster options) -> a private cluster (for
    tests that break one); every cluster made is closed at the end of the test."""
    made: list[PostgresCluster] = []

    def make(*, start: bool = True, **options) -> PostgresCluster:
        cluster = _new_cluster(postgres_bindir, **options)
        made.append(cluster)
        return cluster.start() if start else cluster

    yield make
    for cluster in made:
        cluster.close()


def _database_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{stem}_{secrets.token_hex(4)}"  # <= 63 bytes, PostgreSQL's limit


@pytest.fixture(params=_BACKENDS)
def database(request, tmp_path) -> FreshDatabase:
    """A fresh, empty database on each selected backend (ids: sqlite, postgresql)."""
    if request.param == "sqlite":
        path = tmp_path / "fleet.sqlite"
        yield FreshDatabase("sqlite", f"sqlite:///{path}", str(path), None)
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    cluster.start()  # no-op unless an earlier test left it stopped
    name = cluster.create_database(_database_name(request.node.name))
    yield FreshDatabase("postgresql", cluster.url(name), name, cluster)
    cluster.start()  # the test may have stopped it
    cluster.drop_database(name)


@pytest.fixture
def database_url(database) -> str:
    """SQLAlchemy URL of a fresh, empty database (parametrized: sqlite, postgresql)."""
    return database.url
