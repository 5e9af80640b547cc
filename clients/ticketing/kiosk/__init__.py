"""The gate kiosk: `ticketing-kiosk` validates scanned ticket codes at a turnstile.

Usage:

    ticketing-kiosk --target HOST:PORT --event EVENT_ID --gate north-1 \\
        [--input FILE] [--journal PATH] [--tls] [--plain]

It waits (up to --connect-timeout) for the server's health to say SERVING, signs in as an
entry manager (TICKETING_TOKEN, or TICKETING_KIOSK_EMAIL and TICKETING_KIOSK_PASSWORD, or the
`ticketctl login` session, `ticketing.session`), checks that the account is assigned to the
event's gates (`ticketctl events staff add`; else it exits 1 saying so before any scan), reads
one code per line from stdin (a barcode scanner types like a keyboard) or `--input`, and for
each shows ADMIT or REJECT with the reason and the seat, plus running counts. Empty lines are
skipped; bad codes, refusals and even an unreachable server never stop the loop. It stops on
end of input, Ctrl-C or SIGTERM, prints a summary and exits 0.

Every scan gets a fresh scan_id (uuid4). Calls have a 3 s deadline; UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED are retried with the same scan_id and a
jittered backoff for up to 30 s, then the scan is recorded UNRESOLVED (the server may or may
not have burned the ticket: staff check it by hand; a supervisor reconciles the journal with
GateService.ListScans). While the server cannot be reached the screen says
"SERVER UNREACHABLE — retrying"; a background grpc.health.v1 Check poll notices outages and
recoveries while nobody scans.

The journal (`ticketing.kiosk.journal`, JSON lines, fsync per line, mode 0600) gets a "read"
line before a scan is sent and a "result" line after. A scan read but never resolved (the
kiosk crashed or was stopped mid-scan) is re-submitted with its original scan_id on the next
start, before any new input; the server then answers with its first result if it had
processed the scan, so nobody is burned twice or told ALREADY_USED for their own entry.
UNRESOLVED scans are final for the kiosk and are not re-submitted: the person at the gate
was dealt with by hand, and burning their ticket minutes later could be wrong.

Privacy trade-off: the "read" line keeps the raw code, because re-submitting needs it. The
server's scan log keeps only a hash; this file is local to the kiosk, 0600, and should live
on the kiosk's own (ideally encrypted) disk. Every line also has `code_hash`, the server's
hash, for reconciliation without the code.

Offline (issue 14, docs/offline-gates.md "Kiosk"): `--enroll TOKEN` stores a device credential
(0600) used by later starts instead of a password; with a synced kit (keys, revocations) the
kiosk admits signed codes by itself while the server is unreachable and uploads them when it
answers again (`--no-offline` keeps the old retry-then-UNRESOLVED loop).

Modules: `validation` (the Kiosk loop, no UI), `views` (results and counts), `render`
(rich panel or plain lines), `journal`, `signin` (credentials and start-up checks), `health`
(the gate service's health check), `lines` (input), `main` (the command line), `device`
(enrollment and the credential file), `offline` (the kit and local verdicts), `switching` (when
to go offline; pure rules).
"""

from ticketing.kiosk.journal import Journal, PendingScan, code_hash
from ticketing.kiosk.validation import Kiosk, KioskObserver, RetryPolicy
from ticketing.kiosk.views import Counts, Outcome, ScanResultView, SeatView

__all__ = [
    "Counts",
    "Journal",
    "Kiosk",
    "KioskObserver",
    "Outcome",
    "PendingScan",
    "RetryPolicy",
    "ScanResultView",
    "SeatView",
    "code_hash",
]
