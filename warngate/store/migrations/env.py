"""Alembic environment: runs on the connection warngate hands it (see store.engine.migrate)."""

from alembic import context

from warngate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through warngate (warngate db upgrade), not bare alembic")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
