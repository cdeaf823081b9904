"""The controller's online models: what a draft call and a verify cost, and how often drafts are accepted.

Costs: each measured time goes into a bucket (rows and tokens on a geometric grid, and whether the
other worker ran at the same time, `overlap`: in PSD draft and target share the machine), smoothed
there (an exponential moving average, outliers clipped). Least squares over the buckets then gives
the terms of :class:`minedraft.spec.theory.CostModel` (the one latency model; nothing else models
latency): for a verify of ``b`` rows and ``T`` tokens in all, ``fixed + per_row * b + per_token * T``
(an AR decode is a verify of one token per row); for a draft call of ``k`` forwards,
``call + k * (fixed + per_row * b)``. Buckets keep old shapes alive (a steady k does not erase what
k = 0 cost), and each bucket follows its own drift.

Acceptance: per position i, the probability that draft i is accepted once drafts 1..i-1 were
(decayed counts, so it follows the traffic; an unseen position borrows the one before it), and per
request a factor, its own pooled rate over the global one, shrunk toward 1 by a prior of a few drafts.

Pure Python: a fit is a 3 x 3 solve over a few dozen buckets, done at most once per step.
"""

from __future__ import annotations

import math

from minedraft.spec.theory import CostModel

# Bucket edges (rows, tokens): one bucket per step of about 1.4x, so 16 and 17 rows share one.
_GRID = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048]
SMOOTHING = 0.15  # weight of a new measurement in its bucket once the bucket has a few
MAX_WEIGHT = 8.0  # a bucket's weight in the fit: its measurements, up to this many
REFIT_EVERY = 8  # measurements into known buckets between two fits (a new bucket refits at once)


def _bucket(x: float) -> int:
    for i, edge in enumerate(_GRID):
        if x <= edge:
            return i
    return len(_GRID)


class BucketFit:
    """Smoothed measurements y at features x (x[0] == 1), per bucket; `solve()` -> non-negative
    coefficients of the linear model by least squares over the buckets."""

    def __init__(self, num_features: int):
        self.n = num_features
        self.buckets: dict[tuple, list] = {}  # key -> [count, x_mean..., y_mean]
        self._coef: list[float] | None = None
        self._stale = 0  # measurements since the last fit

    def add(self, key: tuple, x: list[float], y: float) -> None:
        if not (y >= 0.0 and math.isfinite(y)):
            return
        b = self.buckets.get(key)
        self._stale += 1
        if b is None:
            self.buckets[key] = [1.0, *x, y]
            self._coef = None
        else:
            count, mean = b[0], b[-1]
            if count >= 3:  # a scheduling hiccup on a shared machine must not move the bucket far
                y = min(max(y, 0.5 * mean), 2.0 * mean)
            w = max(SMOOTHING, 1.0 / (count + 1))
            for i in range(self.n):
                b[1 + i] += w * (x[i] - b[1 + i])
            b[-1] += w * (y - mean)
            b[0] = count + 1

    def __len__(self) -> int:
        return len(self.buckets)

    def solve(self) -> list[float] | None:
        if self.buckets and (self._coef is None or self._stale >= REFIT_EVERY):
            self._coef, self._stale = _nnls(list(self.buckets.values()), self.n), 0
        return self._coef


def _nnls(rows: list, n: int) -> list[float]:
    """Weighted least squares with a small ridge; a negative coefficient is dropped and the rest refit
    (a tiny active set: three unknowns)."""
    scale = [max(abs(r[1 + i]) for r in rows) or 1.0 for i in range(n)]
    active = list(range(n))
    while True:
        m = len(active)
        a = [[0.0] * m for _ in range(m)]
        v = [0.0] * m
        for r in rows:
            w = min(r[0], MAX_WEIGHT)
            xs = [r[1 + i] / scale[i] for i in active]
            for p in range(m):
                v[p] += w * xs[p] * r[-1]
                for q in range(m):
                    a[p][q] += w * xs[p] * xs[q]
        ridge = 1e-9 * (sum(a[p][p] for p in range(m)) or 1.0)
        for p in range(m):
            a[p][p] += ridge
        sol = _solve(a, v)
        coef = [0.0] * n
        for p, i in enumerate(active):
            coef[i] = sol[p] / scale[i]
        negative = [i for i in active if coef[i] < 0.0]
        if not negative or len(active) == 1:
            return [max(0.0, c) for c in coef]
        active.remove(min(negative, key=lambda i: coef[i]))


def _solve(a: list[list[float]], v: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (m <= 3)."""
    m = len(v)
    a = [row[:] + [v[i]] for i, row in enumerate(a)]
    for c in range(m):
        p = max(range(c, m), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        if abs(a[c][c]) < 1e-300:
            continue
        for r in range(c + 1, m):
            f = a[r][c] / a[c][c]
            for j in range(c, m + 1):
                a[r][j] -= f * a[c][j]
    x = [0.0] * m
    for c in range(m - 1, -1, -1):
        if abs(a[c][c]) >= 1e-300:
            x[c] = (a[c][m] - sum(a[c][j] * x[j] for j in range(c + 1, m))) / a[c][c]
    return x


class OnlineCostModel:
    """Draft and verify cost, fitted from the steps the scheduler measures, separately for a worker
    running alone and beside the other one (`overlap`: PSD). Times in seconds."""

    def __init__(self):
        self.verify_fits = {False: BucketFit(3), True: BucketFit(3)}  # x = (1, rows, tokens)
        self.draft_fits = {False: BucketFit(3), True: BucketFit(3)}  # x = (1, k, k * rows)
        self.overhead: dict[str, float] = {}  # step kind -> smoothed wall time beyond the compute
        self._coefs: dict = {}  # (which, overlap) -> coefficients, until the next measurement

    def add_verify(self, rows: int, tokens: int, seconds: float, overlap: bool = False) -> None:
        self._coefs.clear()
        if rows > 0 and tokens >= rows:
            self.verify_fits[overlap].add((_bucket(rows), _bucket(tokens)), [1.0, rows, tokens], seconds)

    def add_draft(self, rows: int, k: int, seconds: float, overlap: bool = False) -> None:
        self._coefs.clear()
        if rows > 0 and k > 0:
            self.draft_fits[overlap].add((_bucket(rows), k), [1.0, k, k * rows], seconds)

    def add_overhead(self, kind: str, seconds: float) -> None:
        old = self.overhead.get(kind)
        seconds = max(0.0, seconds)
        self.overhead[kind] = seconds if old is None else old + SMOOTHING * (min(seconds, 3 * old + 1e-3) - old)

    def ready(self) -> bool:
        return bool(len(self.verify_fits[False]) + len(self.verify_fits[True]))

    def _coef(self, fits: dict, overlap: bool) -> list[float]:
        key = (id(fits), overlap)
        c = self._coefs.get(key)
        if c is None:
            c = self._coefs[key] = fits[overlap].solve() or fits[not overlap].solve() or [0.0, 0.0, 0.0]
        return c

    def verify(self, rows: int, tokens: float, overlap: bool = False) -> float:
        if rows <= 0:
            return 0.0
        c = self._coef(self.verify_fits, overlap)
        return c[0] + c[1] * rows + c[2] * tokens

    def draft(self, rows: int, k: int, overlap: bool = False) -> float:
        if rows <= 0 or k <= 0:
            return 0.0
        c = self._coef(self.draft_fits, overlap)
        return c[0] + k * (c[1] + c[2] * rows)

    def per_token(self, overlap: bool = False) -> float:
        """The verify's cost of one more token in a row (the marginal cost of a verified draft)."""
        return self._coef(self.verify_fits, overlap)[2]

    def cost_model(self, overlap: bool = False) -> CostModel:
        """The fit as theory's CostModel (one draft forward; the draft call's constant in `overhead`)."""
        v, d = self._coef(self.verify_fits, overlap), self._coef(self.draft_fits, overlap)
        return CostModel(draft_fixed=d[1], draft_per_row=d[2], verify_fixed=v[0], verify_per_row=v[1],
                         overhead=d[0], verify_per_token=v[2])


class AcceptanceModel:
    """Acceptance per position (global, decayed counts) and per request (a shrunk factor)."""

    # The global counts decay per verification step by DECAY, or by ROW_DECAY per row verified where that
    # is faster: they follow the last ~30 steps at one row and the last ~100 rows' drafts at many. Per step
    # alone, a 16-row server took ~40 steps (most of a 64-token round) to see code traffic turn to prose, and
    # psd kept pipelining on the code's acceptance meanwhile.
    DECAY = 0.97
    ROW_DECAY = 0.99
    PRIOR = 2.0  # pseudo-drafts of a position's prior (the position before it; 0.5 for the first)
    REQUEST_PRIOR = 8.0  # pseudo-drafts that pull a request's factor toward 1

    def __init__(self, max_k: int):
        self.trials = [0.0] * max_k
        self.accepts = [0.0] * max_k
        # drafts verified at position 1, not decayed: whether the acceptance is known at all. The decayed
        # count cannot say it: at one row it levels off at 1 / (1 - DECAY), about 33
        self.first_drafts = 0
        self.requests: dict[str, list] = {}  # id -> [drafts seen, accepted, last step seen]
        self.steps = 0
        self._rates: list[float] | None = None
        self._pooled: float | None = None

    def grow(self, max_k: int) -> None:
        if max_k > len(self.trials):
            self.trials += [0.0] * (max_k - len(self.trials))
            self.accepts += [0.0] * (max_k - len(self.accepts))
            self._rates = None

    def observe(self, request_ids: list[str], lengths: list[int], num_accepted: list[int]) -> None:
        """One verification: row r verified lengths[r] drafts and accepted the first num_accepted[r]."""
        self.steps += 1
        self.grow(max(lengths, default=0))
        decay = min(self.DECAY, self.ROW_DECAY ** sum(length > 0 for length in lengths))
        self.trials = [t * decay for t in self.trials]
        self.accepts = [a * decay for a in self.accepts]
        for rid, length, n in zip(request_ids, lengths, num_accepted):
            if length <= 0:
                continue
            seen = min(n + 1, length)  # positions 1..n accepted, n+1 rejected (if it was verified)
            self.first_drafts += 1
            for i in range(seen):
                self.trials[i] += 1.0
            for i in range(min(n, length)):
                self.accepts[i] += 1.0
            r = self.requests.setdefault(rid, [0.0, 0.0, 0])
            r[0] += seen
            r[1] += min(n, length)
            r[2] = self.steps
        self._rates = self._pooled = None
        if self.steps % 128 == 0:  # finished requests leave after a while
            self.requests = {k: v for k, v in self.requests.items() if self.steps - v[2] < 64}

    def rates(self) -> list[float]:
        """P(draft i accepted | drafts before it accepted), i = 1..max_k."""
        if self._rates is None:
            out, prior = [], 0.5
            for t, a in zip(self.trials, self.accepts):
                prior = (a + self.PRIOR * prior) / (t + self.PRIOR)
                out.append(min(prior, 0.995))
            self._rates = out
        return self._rates

    def pooled(self) -> float:
        if self._pooled is None:
            self._pooled = (sum(self.accepts) + 1.0) / (sum(self.trials) + 2.0)
        return self._pooled

    def factor(self, request_id: str) -> float:
        r = self.requests.get(request_id)
        if r is None:
            return 1.0
        g = self.pooled()
        own = (r[1] + self.REQUEST_PRIOR * g) / (r[0] + self.REQUEST_PRIOR)
        return own / g

    def curve(self, request_id: str, max_k: int, cap: int | None = None) -> list[float]:
        """Expected tokens one verification commits for this request (1 + accepted drafts), for
        k = 0..max_k drafts; cap: the most it may still take."""
        f, total, run = self.factor(request_id), 1.0, 1.0
        rates = self.rates() or [0.5]
        limit = max_k if cap is None else min(max_k, max(0, cap - 1))
        out = [1.0]
        for i in range(max_k):
            if i < limit:
                run *= min(0.999, (rates[i] if i < len(rates) else rates[-1]) * f)
                total += run
            out.append(total)
        return out
