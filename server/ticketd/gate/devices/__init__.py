"""Gate kiosk devices: enrollment tokens, device credentials, scope."""
