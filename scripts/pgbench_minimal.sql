-- pgbench custom script: the MINIMAL booking transaction, the PostgreSQL reference of
-- scripts/bench_booking (issue 16): lock one seat, mark it sold, insert one order. Nothing
-- else a real sale needs (event terms, request_id idempotency, tickets, the seat-change
-- outbox); so pgbench_booking.sql's rate as a share of this one says what our statements
-- cost PostgreSQL beyond the least a booking could.
--
-- Same seat picks and variables as pgbench_booking.sql (one place per order here).
-- Run: pgbench -n -M prepared -c 64 -j 2 -T 8 -f scripts/pgbench_minimal.sql -D ... DBNAME

\set s1 :seat_min + permute((:i * :clients + :client_id) % :seats, :seats, :seed)
\set i :i + 1
\set rid random(1, 9223372036854775806)

BEGIN;
SELECT id FROM seats WHERE id = :s1 FOR UPDATE;
UPDATE seats SET status = 'SOLD' WHERE id = :s1 AND status = 'AVAILABLE';
INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, status, total_minor,
                    currency_code, ticket_count)
VALUES (gen_random_uuid(), :event_id::uuid, md5('bench-buyer-' || :client_id)::uuid,
        md5(:rid::text)::uuid, left(md5(:rid::text || 'h'), 32), 'CONFIRMED', :price, 'EUR', 1);
COMMIT;
