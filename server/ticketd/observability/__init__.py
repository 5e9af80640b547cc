"""Metrics, structured access logs and tracing: what operators watch (docs/observability.md)."""
