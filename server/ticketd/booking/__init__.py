"""Booking: orders, tickets and refunds under pessimistic seat locks."""
