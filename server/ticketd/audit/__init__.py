"""The audit log (issue 15): who did what, when, to what, from which principal."""
