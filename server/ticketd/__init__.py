"""ticketd: the ticketing gRPC server."""

import os

# ticketd forks only to exec (pg_ctl, initdb), never to run gRPC in a child, so gRPC's fork
# handlers buy nothing; left on, they log "Other threads are currently calling into gRPC,
# skipping fork() handlers" on every embedded-database start and stop. Must be set before
# grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
