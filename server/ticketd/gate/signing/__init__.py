"""Signed ticket codes: per-event Ed25519 keys, the code format, the revocation list."""
