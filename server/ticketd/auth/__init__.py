"""Authentication and authorization: tokens, passwords, the role policy table, the interceptor."""
