"""Authentication changes NOTIFY `ticketing_auth_changes` (issue 16: the principal cache).

The edge keeps a short cache of the principal behind each credential (ticketd.auth.cache) so
that a call does not read its caller's roles from PostgreSQL every time. A cached principal
must stop working on the next call once anything it was built from changes, whoever changed
it and in whichever process: so the database itself announces those changes. Triggers on
the four tables a principal is read from NOTIFY one channel, and every ticketd process
LISTENs on it and drops its whole cache when a notification arrives (PostgreSQL delivers it
to every listener at the writer's commit). Only the columns a principal depends on fire:
`last_used_time` refreshes and sign-in bookkeeping stay silent.

- users: roles, status, token_generation (role changes, disable, password change and
  RevokeTokens bump the generation), or the row deleted;
- partner_api_keys: revoke_time, or deleted;
- partners: status, budgets, public_sales, or deleted;
- gate_devices: revoke_time, or deleted.

The payload is the table's name (for logs); a listener invalidates everything either way.

Revision ID: 0017
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None

CHANNEL = "ticketing_auth_changes"

# (table, columns whose change alters a principal)
_WATCHED = (
    ("users", ("roles", "status", "token_generation")),
    ("partner_api_keys", ("revoke_time",)),
    ("partners", ("status", "max_concurrent_rpcs", "rate_per_second", "public_sales")),
    ("gate_devices", ("revoke_time",)),
)


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION notify_auth_change() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END;
        $$
        """
    )
    for table, columns in _WATCHED:
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
        op.execute(
            f"CREATE TRIGGER {table}_auth_update AFTER UPDATE ON {table} "
            f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION notify_auth_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_auth_delete AFTER DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION notify_auth_change()"
        )


def downgrade() -> None:
    for table, _ in _WATCHED:
        op.execute(f"DROP TRIGGER {table}_auth_update ON {table}")
        op.execute(f"DROP TRIGGER {table}_auth_delete ON {table}")
    op.execute("DROP FUNCTION notify_auth_change()")
