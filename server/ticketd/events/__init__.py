"""Events and their seat inventory."""
