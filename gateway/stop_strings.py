"""Stop strings on streamed text: cut the text before the first stop string, and hold back a tail
that could still become one, so that no part of a stop string ever reaches the client."""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, delta: str, final: bool = False) -> tuple[str, bool]:
        """Text that is safe to send now, and whether a stop string was found (the text ends before it)."""
        if not self.stops:
            return delta, False
        buf = self.held + delta
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return buf[:min(found)], True
        keep = 0 if final else max(self._partial(buf, s) for s in self.stops)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep], False

    @staticmethod
    def _partial(buf: str, stop: str) -> int:
        """Length of the longest tail of buf that is a proper prefix of stop."""
        for n in range(min(len(stop) - 1, len(buf)), 0, -1):
            if buf.endswith(stop[:n]):
                return n
        return 0
