"""Speculative decoding: the AR/SD/PSD schedule, exact verification and sampling, the worker
interfaces with their in-process implementations, and the latency model (theory.py)."""
