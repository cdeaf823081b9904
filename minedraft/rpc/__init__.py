"""The services' plumbing: gRPC clients (remote workers) and servicers, token channels, health,
API keys and per-service metrics."""
