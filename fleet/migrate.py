"""Schema migrations (Alembic) driven from the fleet config: upgrade, downgrade, current,
check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic(connection=None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Back to `revision` (a release rolled back); each migration's downgrade keeps the
    rows it can."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step, revision: str) -> None:
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            step(_alembic(connection), revision)
        return
    # SQLite alters a table by copying it and dropping the old one (Alembic's batch mode);
    # with foreign keys enforced (fleet/db.py) dropping a table that rows of another table
    # reference fails half way, and SQLite does not roll DDL back. So the checks are off
    # during the migration (the pragma only takes effect outside a transaction), and the
    # whole database is checked before the migration is committed.
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # ends SQLAlchemy's autobegun transaction around the pragma
        try:
            with connection.begin():
                step(_alembic(connection), revision)
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows whose references are broken: "
                                       f"{broken[:5]}")
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    return ScriptDirectory.from_config(_alembic()).get_current_head()


def revision(engine: Engine, message: str) -> None:
    """Developers: autogenerate a migration from the models against an up-to-date db."""
    with engine.begin() as connection:
        command.revision(_alembic(connection), message=message, autogenerate=True)
