"""The fleet server's frame: configuration, schema migrations on SQLite and PostgreSQL,
the command line (db upgrade, users, tokens) and the app factory."""

import io
from pathlib import Path
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from fleet import auth, migrate, partitions
from fleet.cli import main
from fleet.config import ConfigError, load
from fleet.db import make_engine, make_sessions
from fleet.models import ApiToken, AuditLog, Base, User


# --- configuration -------------------------------------------------------------
def test_config_defaults_file_and_environment(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet]\ndata_dir = "/srv/gg"\ndeployments = ["hcmc", "hanoi"]\n'
                    '[presence]\nkeepalive = 20\n')
    config = load(path, env={"GREENGATE_MQTT_PORT": "1883", "GREENGATE_MQTT_TLS": "false"})
    assert config.database_url == "sqlite:////srv/gg/fleet.sqlite"
    assert config.fleet.deployments == ["hcmc", "hanoi"]
    assert config.presence.keepalive == 20.0 and config.presence.sweep == 5.0
    assert config.mqtt.port == 1883 and config.mqtt.tls is False
    env = {"GREENGATE_FLEET_DATABASE_URL": "postgresql+psycopg://fleet@db/fleet",
           "GREENGATE_FLEET_DEPLOYMENTS": "a, b"}
    config = load(None, env=env)
    assert config.database_url.startswith("postgresql+psycopg://")
    assert config.fleet.deployments == ["a", "b"]


@pytest.mark.parametrize("text, words", [
    ('[fleet]\ndata_dir = "/x"\n[mqtt]\nport = "eighty"\n', "line 4: 'port' must be int"),
    ('[fleet]\ncolour = 1\n', "line 2: unknown key 'colour'"),
    ('[fleat]\n', "line 1: unknown section [fleat]"),
    ('[presence]\nsweep = 0\n', "sweep must be positive"),
    ('[fleet]\nretention_days = 0\n', "line 2: [fleet] retention_days must be at least 1"),
    ('[fleet\n', "not valid TOML"),
])
def test_config_errors_name_the_file_and_line(tmp_path, text, words):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert words in str(info.value) and str(path) in str(info.value)


def test_config_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="GREENGATE_MQTT_PORT"):
        load(None, env={"GREENGATE_MQTT_PORT": "eighty"})


# --- schema --------------------------------------------------------------------
def test_migrations_build_exactly_the_models_schema(database_url):
    engine = make_engine(database_url)
    try:
        assert migrate.current(engine) is None
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        with engine.connect() as connection:
            # the scan table's day partitions (PostgreSQL) are not model tables
            context = MigrationContext.configure(
                connection, opts={"include_name": partitions.schema_name})
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], diff
        tables = set(inspect(engine).get_table_names())
        assert {"scan", "kiosk", "status_entry", "presence_event", "outage", "audit_log",
                "user_account", "api_token", "bundle", "trust_entry", "policy",
                "kiosk_certificate", "enrolment_token", "enrolment_attempt"} <= tables
        migrate.upgrade(engine)  # idempotent
    finally:
        engine.dispose()


def test_migration_0009_alters_tables_that_rows_reference(database_url):
    """0009 adds columns to location and user_account, which kiosks and users reference.
    On SQLite that copies and drops the tables: with foreign keys enforced it used to stop
    half way (FOREIGN KEY constraint failed), leaving the schema at 0008 with 0009's new
    tables and a stray _alembic_tmp_location."""
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0008")
        with engine.begin() as c:
            c.execute(text("INSERT INTO district (id, code, name) VALUES (1, 'q7', 'Quận 7')"))
            c.execute(text("INSERT INTO location (id, code, name, address, district_id) "
                           "VALUES (1, 'q7-market', 'Chợ', '', 1)"))
            c.execute(text("INSERT INTO kiosk (id, location_id, deployment, policy, state, "
                           "detail, session) VALUES ('q7-a', 1, 'test', 'p', 'online', '', 0)"))
            c.execute(text("INSERT INTO user_account (username, password_hash, role, "
                           "district_id, disabled, created_at) VALUES "
                           "('lan', 'x', 'district_officer', 1, false, 0)"))
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        with engine.connect() as c:
            assert c.execute(text("SELECT id, location_id FROM kiosk")).one() == ("q7-a", 1)
            assert c.execute(text("SELECT code, ward_id, organisation_id FROM location"))\
                .one() == ("q7-market", None, None)
            assert c.execute(text("SELECT username, district_id, ward_id FROM user_account"))\
                .one() == ("lan", 1, None)
        assert not [t for t in inspect(engine).get_table_names() if t.startswith("_alembic")]
        if engine.dialect.name == "sqlite":  # the checks are back on for the fleet's work
            with engine.connect() as c:
                assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_cli_db_upgrade_users_and_tokens(database_url, tmp_path, monkeypatch, capsys):
    env = {"GREENGATE_FLEET_DATABASE_URL": database_url,
           "GREENGATE_FLEET_DATA_DIR": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["db", "current"]) == 1  # empty database: behind
    assert main(["db", "upgrade"]) == 0
    assert f"schema {migrate.head()}" in capsys.readouterr().out

    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["user", "create", "lan", "--role", "operator", "--password-stdin"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough secret\n"))
    assert main(["user", "create", "lan", "--role", "operator", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("the first admin's secret\n"))
    assert main(["user", "add", "mai", "--role", "admin", "--password-stdin"]) == 0
    assert main(["token", "create", "nobody", "--name", "ci"]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert main(["token", "create", "lan", "--name", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith(auth.TOKEN_PREFIX)

    engine = make_engine(database_url)
    try:
        with make_sessions(engine)() as session:
            user = session.scalar(select(User).where(User.username == "lan"))
            assert user.role == "operator" and "a long enough secret" not in user.password_hash
            assert auth.check_password(user, "a long enough secret")
            assert not auth.check_password(user, "wrong password")
            stored = session.scalars(select(ApiToken)).one()
            assert stored.token_hash == auth.hash_token(token) and token not in stored.token_hash
            assert auth.user_for_token(session, token).username == "lan"
            assert auth.user_for_token(session, token + "x") is None
            actions = [a.action for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
            assert actions == ["user.create", "user.create", "token.create"]
    finally:
        engine.dispose()


def test_app_factory_takes_its_config(fleet_app, fleet_config):
    fleet = fleet_app.extensions["greengate"]
    assert fleet.config is fleet_config
    assert str(fleet.engine.url).split("://")[0] == fleet_config.database_url.split("://")[0]
    assert fleet_app.config["SECRET_KEY"]
    # the generated secret is kept: a restarted server keeps the dashboard's sessions
    assert (fleet_config.data_dir / "secret_key").read_text().strip() == fleet_app.config["SECRET_KEY"]


def test_config_reference_is_in_step_with_the_schema():
    """docs/fleet-config.md is what `python -m fleet.config` prints: no key undocumented."""
    from fleet import config as fleet_config_module

    doc = (Path(__file__).resolve().parents[1] / "docs" / "fleet-config.md").read_text()
    assert doc == fleet_config_module.reference(), \
        "run: .venv/bin/python -m fleet.config > docs/fleet-config.md"
    for section, keys in fleet_config_module.SCHEMA.items():
        for key in keys:
            assert f"`GREENGATE_{section.upper()}_{key.upper()}`" in doc
