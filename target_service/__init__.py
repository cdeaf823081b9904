"""The target service: holds the target model on one device; prefill, verify, decode."""
