"""The gateway: public gRPC API, admission, and the two-batch schedule over the draft and target services."""
