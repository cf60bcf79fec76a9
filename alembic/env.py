"""Alembic environment for crictld's SQLite database."""

from __future__ import annotations

from alembic import context
from crictl.store.engine import make_engine
from crictl.store.models import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or "sqlite://"
    db = context.get_x_argument(as_dictionary=True).get("db")
    path = db if db else url.removeprefix("sqlite:///") if url != "sqlite://" else ":memory:"
    engine = make_engine(path)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,  # SQLite alters tables by copying them
                # SQLite does have transactional DDL (pysqlite hid it; crictl.store.engine
                # takes control of BEGIN): a migration killed halfway leaves nothing behind.
                transactional_ddl=True,
                transaction_per_migration=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("crictld's migrations run online only")
run_migrations_online()
