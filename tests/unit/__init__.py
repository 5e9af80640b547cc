"""Unit tier: pure decisions, no database, no server, no network; the whole tier runs in seconds.

Tests here import only what they test (the domains' rules.py, ticketd.pagination,
ticketd.ratelimit, ticketd.textcheck, ticketd.config, ticketing._launch) plus the helpers in
this package, so they stay easy to move when the server's modules move.
"""
