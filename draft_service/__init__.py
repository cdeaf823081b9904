"""The draft service: holds the draft model on one device; prefill, propose k tokens per request."""
