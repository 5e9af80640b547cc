"""Gate entry: exactly-once ticket burn, idempotent scans, the scan log."""
