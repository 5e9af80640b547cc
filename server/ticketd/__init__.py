"""ticketd: the ticketing gRPC server."""
