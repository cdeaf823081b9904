"""How draft tokens are made: one proposer per file (model drafts today live in
spec/local_workers.py; n-gram, suffix and EAGLE proposers land here)."""
