"""Venues and their seating layouts."""
