"""Users with roles.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email         text NOT NULL,
            display_name  text NOT NULL,
            password_hash text NOT NULL,
            roles         text[] NOT NULL,
            create_time   timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT users_email_lower CHECK (email = lower(email)),
            CONSTRAINT users_email_len CHECK (char_length(email) BETWEEN 3 AND 254),
            CONSTRAINT users_display_name_len CHECK (char_length(display_name) BETWEEN 1 AND 100),
            CONSTRAINT users_roles_valid CHECK (
                cardinality(roles) >= 1
                AND roles <@ ARRAY['ADMIN','ORGANIZER','CUSTOMER','SUPPORT','ENTRY_MANAGER']::text[]
            )
        )
        """
    )
    # text_pattern_ops serves both equality and `email LIKE 'prefix%'` for ListUsers.
    op.execute("CREATE UNIQUE INDEX users_email_key ON users (email text_pattern_ops)")


def downgrade() -> None:
    op.execute("DROP TABLE users")
