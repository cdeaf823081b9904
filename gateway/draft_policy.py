"""Which kind of draft node (its `Info.method`: model, ngram, suffix) drafts each request, in a pool
that mixes kinds.

The measure is committed tokens per verify of the request (its accepted drafts + 1), per kind: what a
verify slot of the target bought. A request's figure on its current kind is blended with a prior per
kind, the pool-wide figure of every request drafted by that kind, worth PRIOR_WEIGHT verifies, which
starts at OPTIMISTIC tokens per verify so that a kind nobody tried yet gets its chance.
- A new request goes to the kind with the best prior (ties: the less loaded kind).
- At each proposal (a step boundary) a request moves when another kind's prior beats its own blended
  figure by SWITCH_MARGIN; it is re-prefilled there from every committed token, as failover does. Its
  old row is released with that node's next call.
With one kind in the pool nothing changes: every request stays where the least-loaded rule put it.
Exactness does not depend on any of it: which node drafts changes only speed.

What a verify committed is read from the tokens the next proposal hands the request's node (the
pool sees no verdicts). Target-only steps in between (a batch the schedule did not send, e.g. rows
a model-free node kept finding nothing for: spec/dry_rows.py) add a token each: those count as
verifies of one token, as many as the tokens beyond the draft's length + 1, so that a node whose
answers are empty is not credited with the target's tokens.
"""

from __future__ import annotations

PRIOR_WEIGHT = 8.0  # verifies of the kind's pool-wide figure in a request's estimate
OPTIMISTIC = 3.0  # tokens per verify a kind is credited with before anyone used it
SWITCH_MARGIN = 0.15  # a move must promise this much more (hysteresis: moves cost a prefill)
MIN_OWN_VERIFIES = 4  # a request is judged on its current kind only after this many of its verifies


class KindPolicy:
    def __init__(self):
        self.totals: dict[str, list[float]] = {}  # kind -> [tokens, verifies], pool-wide
        self.own: dict[str, dict[str, list[float]]] = {}  # request -> kind -> [tokens, verifies]
        self.pending: dict[str, list] = {}  # request -> [kind, drafted length] of its proposal not yet accounted for
        self.switches = 0

    # -- measuring ------------------------------------------------------------------------------------
    def proposed(self, request_id: str, kind: str) -> None:
        self.pending[request_id] = [kind, None]

    def drafted(self, request_id: str, length: int) -> None:
        """How many tokens the node drafted for the request's pending proposal."""
        if request_id in self.pending:
            self.pending[request_id][1] = length

    def committed(self, request_id: str, num_tokens: int) -> None:
        """Tokens handed to the request's node since its last proposal: what that proposal's verify
        committed, plus a token per target-only step since (0: no verify happened, e.g. the proposal
        was discarded)."""
        kind, length = self.pending.pop(request_id, (None, None))
        if kind is None or num_tokens <= 0:
            return
        verifies = 1 if length is None else 1 + max(0, num_tokens - length - 1)
        for stats in (self.totals.setdefault(kind, [0.0, 0.0]),
                      self.own.setdefault(request_id, {}).setdefault(kind, [0.0, 0.0])):
            stats[0] += num_tokens
            stats[1] += verifies

    def forget(self, request_id: str) -> None:
        self.own.pop(request_id, None)
        self.pending.pop(request_id, None)

    # -- deciding -------------------------------------------------------------------------------------
    def prior(self, kind: str) -> float:
        tokens, verifies = self.totals.get(kind, (0.0, 0.0))
        return (OPTIMISTIC * PRIOR_WEIGHT + tokens) / (PRIOR_WEIGHT + verifies)

    def estimate(self, request_id: str, kind: str) -> float:
        tokens, verifies = self.own.get(request_id, {}).get(kind, (0.0, 0.0))
        return (self.prior(kind) * PRIOR_WEIGHT + tokens) / (PRIOR_WEIGHT + verifies)

    def place(self, kinds: list[str], load: dict[str, int]) -> str:
        """The kind of a new request: the best prior, then the less loaded."""
        return max(kinds, key=lambda k: (self.prior(k), -load.get(k, 0)))

    def choose(self, request_id: str, current: str, kinds: list[str]) -> str:
        """current, or the kind the request should move to now."""
        if len(kinds) < 2 or current not in kinds:
            return current
        own = self.own.get(request_id, {}).get(current, (0.0, 0.0))
        if own[1] < MIN_OWN_VERIFIES:
            return current
        mine = self.estimate(request_id, current)
        best = max((k for k in kinds if k != current), key=self.estimate_for(request_id))
        if self.estimate(request_id, best) > mine * (1.0 + SWITCH_MARGIN):
            self.switches += 1
            return best
        return current

    def estimate_for(self, request_id: str):
        return lambda kind: self.estimate(request_id, kind)
