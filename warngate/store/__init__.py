"""Persistence: SQLAlchemy Core (async) on SQLite by default, PostgreSQL by URL."""

from warngate.store.db import Store
from warngate.store.engine import is_postgres, make_engine, migrate

__all__ = ["Store", "is_postgres", "make_engine", "migrate"]
