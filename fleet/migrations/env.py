"""Alembic environment: the engine comes from the fleet config (fleet/migrate.py), not
from an alembic.ini, so `greengate-fleet db upgrade` works from any directory."""

from alembic import context

from fleet.models import Base
from fleet.partitions import schema_name

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through fleet.migrate (greengate-fleet db upgrade)")
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite",  # ALTER on SQLite
                      compare_type=True, include_name=schema_name)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
