"""ticketctl: the command line for every role."""
