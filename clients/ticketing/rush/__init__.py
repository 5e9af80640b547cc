"""ticketing-rush: the ticket-rush load harness.

Usage::

    ticketing-rush SCENARIO --target HOST:PORT[,HOST:PORT] --admin-email E --admin-password P
        --seats N --buyers N [--concurrency N | --rate R] [--duration S] [--requests N]
        [--connections N] [--warmup S] [--seed N] [--skew zipf:1.1|uniform] [--dup-share 0.1]
        [--event ID] [--observe] --json PATH [--csv PATH] [--chart PATH] [--quiet]

Set-up: the admin signs in, creates a venue and an event of ``--seats`` places (or reuses
``--event``); ``--buyers`` customers register themselves (AuthService.Register) and sign in;
gate scenarios add entry managers (SetUserRoles). Tokens are cached per target and email in
``~/.cache/ticketing/rush-tokens.json`` (``--token-cache``, ``--no-token-cache``), so a second
run skips the bcrypt work. Several comma-separated targets spread the connections over several
server processes.

Scenarios (every booking goes through the public BookSeats RPC, as a signed-in customer):

- ``specific``: buyers pick 1-4 adjacent seats around a Zipf-ranked anchor from the ListSeats
  map (front-centre seats are the most wanted), so many fight over the best seats.
- ``best-available``: buyers ask for 1-4 places of a Zipf-ranked section.
- ``mixed``: both (``--best-share``, default half).
- ``gate``: sell the event first (untimed), then kiosks at ``--gates`` gates validate every
  ticket, with ``--dup-share`` of scans re-showing an already scanned ticket at another gate.
- ``sale``: bookings, refunds (by the owner) and scans together (``--mix``).
- ``checkout``: two-phase sales. A buyer holds seats (HoldSeats, specific or best available
  as in ``mixed``, ``--hold-ttl`` seconds), thinks (``--think``), then pays (ConfirmHold) or
  abandons (``--abandon-share``): ``--release-share`` of the abandoners call ReleaseHold, the
  others walk away and the hold expires under load. ``--late-share`` of the payers pay only
  after their hold ran out (the late-confirmation path: confirmed while the seats are free,
  HOLD_EXPIRED when someone else took one). Think time is not latency: the payment is a
  request of its own, timed from when it was due. The run ends when every place is sold and
  no hold is pending.
- ``partners``: ``--partners`` resellers (created with an API key each) get
  ``--partner-places`` places allocated (default a tenth of the event each, at most half in
  all) and sell them on behalf of end customers (BookSeats with ``on_behalf_of``) in
  ``--partner-share`` of the requests, while the public books the rest (as ``mixed``). The
  partners may not sell publicly (UpdatePartner public_sales=false), and a tenth of their
  requests reach for a public seat anyway (``partner_probe``, to be refused). The audit
  checks that no allocated place went to anyone but its partner, and no partner sold
  outside its allocations.
- ``audit``: no load; only the invariant audit of ``--event``.

``--observe`` (any rush scenario; the server needs ``TICKETING_SEAT_STREAMS=on``): a watcher
follows EventService.WatchSeats on a connection of its own from before the first request
to the end, and the audit gains ``seat_stream_dense`` (no gap, no repeat) and
``seat_stream_matches_seat_map`` (the streamed map equals ListSeats); see
``ticketing.rush.observer``.

The server bounds scans per gate (``TICKETING_GATE_SCAN_RATE``, 100/s with a burst of 200, per
server process). In an open loop the harness spreads scans over enough gates to stay at 80% of
that; in a closed loop it uses 16 gates. Scans above the bound are refused with
RESOURCE_EXHAUSTED/SCAN_RATE_EXCEEDED and counted as errors. It also bounds scans per account
(``TICKETING_CALLER_SCAN_RATE``, 400/s): the gate staff (up to 16 accounts) share the gates
round-robin, so one account stays under it up to ~64 gates. The staff are assigned to the
event (an entry manager scans only at its events) and a created event opens its doors at once.

Exit status: 0 when every invariant holds, 1 when the audit found a violation, 2 bad usage,
3 when the run could not be carried out (server unreachable, admin refused).

JSON report (``--json``). Durations are integers in nanoseconds, as in ghz; counts and
latencies exclude the warm-up (requests whose send was due before ``--warmup`` seconds):

- ``count``: measured requests; ``total``: measured wall time (first measured send to last
  answer); ``average``/``fastest``/``slowest``: latency; ``rps``: count / total;
  ``okRps``: successful requests per second; ``ticketsPerSecond``: places sold per second;
  ``ok``, ``errors`` (non-OK status), ``unexpectedErrors`` (errors other than the contention
  outcomes SEAT_UNAVAILABLE, SEAT_LOCKED, SOLD_OUT), ``tickets`` (places bought).
- ``latencyDistribution``: ``[{"percentage": 50, "latency": ns}, ...]`` for 10, 25, 50, 75, 90,
  95, 99 and 99.9, from an HDR histogram (3 significant digits). In an open loop latency runs
  from the request's due time, so queueing is not hidden (coordinated omission).
- ``histogram``: ten equal-width latency bins ``{"mark": upper bound in s, "count",
  "frequency"}``.
- ``statusCodeDistribution``: gRPC status name -> count (``OK``, ``FAILED_PRECONDITION``...),
  plus two client-side ones: ``CLIENT_BACKLOG`` (open loop: arrivals still unsent a whole call
  deadline after the end, recorded with the time they waited instead of being dropped) and
  ``CLIENT_ERROR`` (an exception in the harness itself).
- ``errorDistribution``: ``CODE/REASON`` (or ``CODE`` when no ErrorInfo) -> count.
- ``reasons``: ErrorInfo.reason -> count (SEAT_UNAVAILABLE, SEAT_LOCKED, SOLD_OUT, ...).
- ``scanResults``: ValidationResult of answered scans -> count (ADMITTED, ALREADY_USED, ...).
  A rejected scan is a normal answer (status OK), not an error.
- ``actions``: per kind of request (``book_specific``, ``book_best``, ``refund``, ``scan``,
  ``scan_duplicate``, ``hold_specific``, ``hold_best``, ``confirm``, ``confirm_late``,
  ``release``, ``partner_book``, ``partner_probe``): count, ok, tickets, rps, outcomes,
  average and p50/p90/p99.
- ``warmup``: ``{"seconds", "count"}`` (requests left out of the figures above).
- ``timeSeries``: one entry per second since the start, by completion time, warm-up included
  and flagged: ``{"second", "warmup", "requests", "ok", "errors", "tickets", "p50", "p99",
  "max"}`` (latencies in ns). The same rows go to ``--csv`` (latencies in ms).
- ``sold``/``capacity``: places of the event sold after the run, and its size;
  ``soldBefore``: sold when the run started.
- ``audit``: ``{"passed", "failed": [names], "checks": [{"name", "passed", "description",
  "violations", "examples"}], "counts": {...}}``, the invariants read back through the API
  (see ``ticketing.rush.audit``).
- ``observer`` (only with ``--observe``): ``snapshotSequence``, ``finalSequence``,
  ``streamSequence``, ``changes``, ``gaps``, ``repeats``, ``snapshots``, ``reconnects``,
  ``mismatches``, ``unsweptExpiredHolds``, ``catchUpSeconds``, ``deliveryLag`` (``p50Ms``,
  ``p99Ms``, ``maxMs``: receive time minus change_time).
- Run description: ``name``, ``scenario``, ``date``, ``target``, ``loadModel`` (closed/open),
  ``concurrency``, ``rate``, ``connections``, ``seed``, ``skew``, ``gates``, ``sent`` (requests
  sent, warm-up included), ``skippedArrivals`` (open-loop arrivals that found nothing to do
  while checkout holds were pending), ``stopReason`` (duration, requests, exhausted = sold
  out or all tickets scanned), ``event`` (id, created, ...), ``setup`` (accounts from the
  token cache or registered, seconds; ``sellPhase`` of a gate run), ``options``,
  ``exitCode``, ``wallSeconds``.
"""
