"""Alembic environment: runs on a connection handed in by `ticketd.db.migrate`.

The schema is written by hand in the migrations (no ORM models, no autogenerate).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `ticketd migrate` (ticketd.db.migrate)")

context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
