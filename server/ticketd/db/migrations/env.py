"""Alembic environment: runs on a connection handed in by `ticketd.db.migrate`."""

from __future__ import annotations

from alembic import context

from ticketd.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `ticketd migrate` (ticketd.db.migrate)")

context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
