"""Driver errors classified by SQLSTATE (never by message text) into domain errors.

Only `ticketd.db.database` calls this, for exceptions raised while it holds a connection, so
an OS or library error raised by other code can never be reported as the database being down.
"""

from __future__ import annotations

import asyncpg

from ticketd.errors import (
    Aborted,
    DomainError,
    FieldViolation,
    InvalidArgument,
    Reason,
    Unavailable,
)

# https://www.postgresql.org/docs/current/errcodes-appendix.html
LOCK_NOT_AVAILABLE = "55P03"
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"
UNIQUE_VIOLATION = "23505"
# Text PostgreSQL cannot store (a NUL byte, or bytes invalid in the database encoding).
_BAD_TEXT = frozenset({"22021", "22P05"})
_UNAVAILABLE = frozenset(
    {
        "57P01",  # admin_shutdown (pg_terminate_backend, server stop)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up)
        "53300",  # too_many_connections
        "08000",
        "08003",
        "08006",
        "08001",
        "08004",
    }
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, or None for anything else."""
    value = getattr(exc, "sqlstate", None)
    return value if isinstance(value, str) and value else None


def db_unavailable() -> Unavailable:
    return Unavailable(
        "the database is unavailable; retry with backoff", reason=Reason.DB_UNAVAILABLE
    )


def classify(exc: BaseException, *, connection_lost: bool) -> DomainError | None:
    """The domain error for a failure seen on a database connection, or None for a bug.

    `connection_lost` says whether the connection is closed after the failure: a socket
    error only means "database unavailable" when it actually took the connection down.
    """
    if isinstance(exc, DomainError):
        return exc
    state = sqlstate_of(exc)
    if state in _BAD_TEXT:
        return InvalidArgument(
            [FieldViolation("request", "text fields must not contain NUL characters")]
        )
    if state == LOCK_NOT_AVAILABLE:
        return Aborted(
            "a row needed by this call is locked by another; retry", reason=Reason.LOCKED
        )
    if state in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED):
        return Aborted("concurrent update conflict; retry", reason=Reason.CONCURRENCY_CONFLICT)
    if state == QUERY_CANCELED:
        return Aborted(
            "the database statement took too long; retry", reason=Reason.STATEMENT_TIMEOUT
        )
    if state in _UNAVAILABLE:
        return db_unavailable()
    if (
        state is None
        and connection_lost
        and isinstance(exc, (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError))
    ):
        # Only when the failure took the connection down. On a live connection the driver's
        # own errors are bugs (an argument it cannot encode, a second query on a busy
        # connection) and an OSError is someone else's: INTERNAL, never "database down".
        return db_unavailable()
    return None
