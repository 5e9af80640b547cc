"""Outbox pruning (issue 15): seat and order changes older than a retention are deleted.

Every hold, release, expiry and sale of a seat adds a `seat_changes` row, so an event's
stream grows with its sale's churn, not with its seats; without pruning the table grows
for ever. The server deletes records older than `TICKETING_OUTBOX_RETENTION` in bounded
batches (`outbox_prune`), and a reader that asks to resume from a pruned position is told
so (FAILED_PRECONDITION SEQUENCE_PRUNED, with where it can start again) instead of
silently receiving the stream with a hole.

- `outbox_pruned (stream, key, pruned_through)`: every record of the stream numbered up to
  `pruned_through` may be gone; none after it is. A table of its own rather than a column
  of `outbox_streams`, so a prune never waits for, nor holds up, the stream's sequencer
  (which holds the counter row while it numbers).
- `outbox_prune(stream, keep, limit)` deletes, per key of the stream kind, a PREFIX of its
  numbered records (all records numbered <= N, never a hole in the middle), only as far as
  every record of the prefix is older than `keep`, at most `limit` records per call (one
  short transaction), and moves `pruned_through` in the same transaction. A reader's
  statement therefore sees either the records or the new `pruned_through`, never neither;
  and since numbers are dense, a page whose first record is not `after + 1` has lost its
  start to a prune (ticketd.db.outbox checks both).
- Gate changes are not pruned: they are the scan log itself (one per scan, as `scans`,
  kept for the audit) and WatchGate's per-gate counts are their aggregate.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE outbox_pruned (
            stream         text NOT NULL REFERENCES outbox_kinds (stream),
            key            uuid NOT NULL,
            pruned_through bigint NOT NULL DEFAULT 0 CHECK (pruned_through >= 0),
            PRIMARY KEY (stream, key)
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION outbox_prune(p_stream text, p_keep interval, p_limit integer)
        RETURNS bigint
        LANGUAGE plpgsql VOLATILE
        AS $$
        DECLARE
            kind outbox_kinds;
            k uuid;
            done bigint;
            upto bigint;
            n bigint;
            total bigint := 0;
        BEGIN
            IF p_limit < 1 THEN
                RAISE EXCEPTION 'outbox_prune: limit must be at least 1, got %', p_limit;
            END IF;
            SELECT * INTO STRICT kind FROM outbox_kinds WHERE stream = p_stream;
            -- Keys in order, so two pruners (two ticketd processes) lock rows in one order.
            FOR k IN SELECT s.key FROM outbox_streams s
                     LEFT JOIN outbox_pruned p ON p.stream = s.stream AND p.key = s.key
                     WHERE s.stream = p_stream
                       AND s.last_sequence > coalesce(p.pruned_through, 0)
                     ORDER BY s.key
            LOOP
                EXIT WHEN total >= p_limit;
                INSERT INTO outbox_pruned (stream, key) VALUES (p_stream, k)
                ON CONFLICT DO NOTHING;
                -- One pruner of a stream at a time; it reads where the last one stopped.
                SELECT pruned_through INTO STRICT done FROM outbox_pruned
                WHERE stream = p_stream AND key = k FOR UPDATE;
                -- The next records in number order, as far as every one of them is older
                -- than p_keep (the first younger one stops the prefix), at most the budget.
                EXECUTE format(
                    'WITH page AS ('
                    '    SELECT sequence, change_time FROM %1$s'
                    '    WHERE %2$I = $1 AND sequence > $2 ORDER BY sequence LIMIT $3'
                    '), young AS ('
                    '    SELECT min(sequence) AS s FROM page'
                    '    WHERE change_time >= now() - $4'
                    ') SELECT coalesce((SELECT s FROM young) - 1,'
                    '                  (SELECT max(sequence) FROM page))',
                    kind.table_name, kind.key_column)
                INTO upto USING k, done, p_limit - total, p_keep;
                CONTINUE WHEN upto IS NULL OR upto <= done;
                EXECUTE format(
                    'DELETE FROM %1$s WHERE %2$I = $1 AND sequence > $2 AND sequence <= $3',
                    kind.table_name, kind.key_column)
                USING k, done, upto;
                GET DIAGNOSTICS n = ROW_COUNT;
                UPDATE outbox_pruned SET pruned_through = upto
                WHERE stream = p_stream AND key = k;
                total := total + n;
            END LOOP;
            -- How many records it deleted (0: nothing left to prune now).
            RETURN total;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION outbox_prune(text, interval, integer)")
    op.execute("DROP TABLE outbox_pruned")
