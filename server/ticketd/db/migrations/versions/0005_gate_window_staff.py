"""Gate trust: the scan window (one SQL function), event staff, renamed scan results.

- `gate_window(...)`: whether an event's gates admit at an instant. The only definition of
  the scan window; the burn statement, the scan log and UpdateEvent all call it.
- `event_staff`: which ENTRY_MANAGERs may act at which event's gates.
- Scan results: NOT_OPEN is renamed NOT_YET_OPEN (the proto enum keeps its number), and
  EVENT_OVER / EVENT_CANCELLED are new.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

from ticketd.db.migrations.sqlscript import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The window is half-open, [doors, end): open at exactly the doors-open instant, over at
# exactly the end instant. Unset doors: `doors_lead` before start; unset end: start plus
# `default_duration` (both are server settings, passed in by the caller, so that changing
# them applies to every event without a stored default). Cancellation wins over both.
# LANGUAGE sql and STABLE (timestamptz +/- interval is STABLE), so the planner inlines it
# into the statement that calls it: no function-call cost on the burn path.
GATE_WINDOW = """
CREATE FUNCTION gate_window(
    cancel_time timestamptz,
    doors_open_time timestamptz,
    start_time timestamptz,
    end_time timestamptz,
    at timestamptz,
    doors_lead interval,
    default_duration interval
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN cancel_time IS NOT NULL THEN 'EVENT_CANCELLED'
        WHEN at < COALESCE(doors_open_time, start_time - doors_lead) THEN 'NOT_YET_OPEN'
        WHEN at >= COALESCE(end_time, start_time + default_duration) THEN 'EVENT_OVER'
        ELSE 'OPEN'
    END
$$
"""

_RESULTS_OLD = "'ADMITTED', 'ALREADY_USED', 'VOID', 'WRONG_EVENT', 'UNKNOWN_CODE', 'NOT_OPEN'"
_RESULTS_NEW = (
    "'ADMITTED', 'ALREADY_USED', 'VOID', 'WRONG_EVENT', 'UNKNOWN_CODE', 'NOT_YET_OPEN', "
    "'EVENT_OVER', 'EVENT_CANCELLED'"
)


def upgrade() -> None:
    op.execute(GATE_WINDOW)
    run_script(
        f"""
        ALTER TABLE scans DROP CONSTRAINT scans_result_check;
        UPDATE scans SET result = 'NOT_YET_OPEN' WHERE result = 'NOT_OPEN';
        ALTER TABLE scans ADD CONSTRAINT scans_result_check CHECK (result IN ({_RESULTS_NEW}));

        CREATE TABLE event_staff (
            event_id    uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            assigned_by uuid NOT NULL REFERENCES users (id),
            assign_time timestamptz NOT NULL DEFAULT now(),
            -- The burn statement looks up (event, caller): the primary key is that index.
            PRIMARY KEY (event_id, user_id)
        )
        """
    )


def downgrade() -> None:
    # The old schema cannot say EVENT_OVER or EVENT_CANCELLED: those scans become what the
    # old server answered in their place (a time refusal, and VOID for cancelled events).
    run_script(
        f"""
        DROP TABLE event_staff;
        ALTER TABLE scans DROP CONSTRAINT scans_result_check;
        UPDATE scans SET result = 'NOT_OPEN' WHERE result IN ('NOT_YET_OPEN', 'EVENT_OVER');
        UPDATE scans SET result = 'VOID' WHERE result = 'EVENT_CANCELLED';
        ALTER TABLE scans ADD CONSTRAINT scans_result_check CHECK (result IN ({_RESULTS_OLD}));
        DROP FUNCTION gate_window(timestamptz, timestamptz, timestamptz, timestamptz,
                                  timestamptz, interval, interval)
        """
    )
