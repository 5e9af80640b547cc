"""Account security: status (lock-out), token generation (revocation), normalised emails.

Revision ID: 0006
Revises: 0005

- `users.status` ACTIVE | DISABLED; `users.token_generation`, carried in every token as
  `gen` and compared on every call (a bump revokes every token issued before).
- Emails are now stored NFKC-normalised and case-folded (`ticketd.accounts.rules
  .normalize_email`) instead of lower(). Rows made before differ only when they hold
  non-ASCII text (for ASCII, lower() and case folding agree), so only those are rewritten,
  here, once. The rule for the rare look-alike pair, where a row's new form is already
  held by another account: the account holding it keeps the address; the other keeps its
  stored email unchanged, can no longer sign in by typing it (Login normalises), and is
  DISABLED (an admin account is only reported, never disabled here, so the system keeps
  its admins). Each case is logged as a warning for an admin to review.
- The old `email = lower(email)` CHECK goes: normalisation is the application's (Python's
  Unicode tables), and PostgreSQL's lower() depends on the database's locale, so the two
  could disagree on some scripts and turn a valid registration into a constraint error.
"""

from __future__ import annotations

import logging
import unicodedata

from alembic import op
from sqlalchemy import text

from ticketd.db.migrations.sqlscript import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("ticketd.migrate")


def _normalize_email(email: str) -> str:
    """A frozen copy of ticketd.accounts.rules.normalize_email as of this migration."""
    value = email.strip()
    for _ in range(4):
        folded = unicodedata.normalize(
            "NFKC", unicodedata.normalize("NFKC", value).casefold()
        ).strip()
        if folded == value:
            break
        value = folded
    return value


def _normalize_stored_emails() -> None:
    bind = op.get_bind()
    # Oldest first: between two rows that both need rewriting, the older one wins.
    rows = bind.execute(
        text(
            "SELECT id, email, roles FROM users WHERE email ~ '[^\\x01-\\x7f]' "
            "ORDER BY create_time, id"
        )
    ).all()
    for row in rows:
        wanted = _normalize_email(row.email)
        if wanted == row.email:
            continue
        holder = bind.execute(
            text("SELECT id FROM users WHERE email = :email"), {"email": wanted}
        ).scalar()
        if holder is None:
            bind.execute(
                text("UPDATE users SET email = :email WHERE id = :id"),
                {"email": wanted, "id": row.id},
            )
            continue
        if "ADMIN" in row.roles:
            log.warning(
                "user %s (%r) is a look-alike of %s's address %r; it is an admin, left active",
                row.id,
                row.email,
                holder,
                wanted,
            )
            continue
        bind.execute(text("UPDATE users SET status = 'DISABLED' WHERE id = :id"), {"id": row.id})
        log.warning(
            "user %s (%r) is a look-alike of %s's address %r: disabled for review",
            row.id,
            row.email,
            holder,
            wanted,
        )


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE users
            ADD COLUMN status text NOT NULL DEFAULT 'ACTIVE'
                CONSTRAINT users_status_valid CHECK (status IN ('ACTIVE', 'DISABLED')),
            ADD COLUMN token_generation bigint NOT NULL DEFAULT 0
                CONSTRAINT users_token_generation_valid CHECK (token_generation >= 0),
            DROP CONSTRAINT users_email_lower
        """
    )
    _normalize_stored_emails()


def downgrade() -> None:
    run_script(
        """
        ALTER TABLE users
            DROP COLUMN token_generation,
            DROP COLUMN status,
            ADD CONSTRAINT users_email_lower CHECK (email = lower(email)) NOT VALID
        """
    )
