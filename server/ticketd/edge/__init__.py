"""The gRPC edge: the interceptor, status building, protobuf conversions shared by servicers."""
