"""Target features on their way to an EAGLE draft, in process.

The target writes, after each forward of a request's committed positions (prefill, verify, decode),
the features of those positions (the store's `layers`: EAGLE-1's final-normed hidden state, or
EAGLE-3's residual states entering three layers, concatenated); the EAGLE draft takes them at its next
proposal. Features are keyed by position, so the draft needs no assumption about which call produced them, and a gap
(never expected: see Engine, which turns the target's prefix cache off) is visible to it."""

from __future__ import annotations

import threading

import torch


class FeatureStore:
    def __init__(self, layers: tuple[int, ...] | None = None):
        """layers: which features the draft reads (Model.forward's feature_layers): None, the target's
        final-normed state (EAGLE-1, width H); EAGLE-3's auxiliary layer ids (width len(layers) * H)."""
        self.layers = tuple(layers) if layers else None
        self._lock = threading.Lock()  # PSD: the target writes one batch while the draft reads the other
        self._pending: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def put(self, request_id: str, start: int, features: torch.Tensor) -> None:
        """features [n, hidden]: those of positions start .. start + n - 1 (committed tokens only)."""
        if features.shape[0]:
            with self._lock:
                self._pending.setdefault(request_id, []).append((start, features.detach()))

    def take(self, request_id: str) -> list[tuple[int, torch.Tensor]]:
        """Everything written for the request since the last take, oldest first."""
        with self._lock:
            return self._pending.pop(request_id, [])

    def drop(self, request_ids) -> None:
        with self._lock:
            for rid in request_ids:
                self._pending.pop(rid, None)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
