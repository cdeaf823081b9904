"""Measured step periods per choice of k: what a step at that k really took, as the scheduler saw it.

The cost model (spec/cost_model.py) predicts a step from the workers' compute times; what it cannot
see is everything else a step costs at that k: the gRPC calls and their (de)serialisation, the token
channel, the draft catching up on tokens it skipped, the gateway handing tokens to its clients, a
noisy neighbour. This table measures the period itself, from one step's dispatch to the next one's
(admission excluded). The controller divides the tokens the acceptance model expects at k (pooled
over every step, so far steadier than one step's count) by this measured period: a choice is judged
by what its steps cost, not by what the fit expected them to cost.

An arm is (family, rows bucket, k): family "decode" (k = 0: one target-only decode of every running
row; the same operation in ar, in an sd step at k = 0 and in a merged psd step), "sd" or "psd" (the
pipeline in steady state, both batches drafted with k). Each arm keeps a decayed mean that follows
its last ~1 / (1 - DECAY) steps. The scheduler feeds every step, in every mode, fixed k included: a
server that ran at k = 4 for a while already knows what k = 4 and k = 0 cost when auto takes over.
Rows the table has not seen in a family borrow how far the model was off from the nearest rows bucket
it has (BORROW_SPAN): the model's error is mostly one of level, and a fresh bucket judged on the model
alone can stay target-only for a whole try interval.
"""

from __future__ import annotations

import math

DECAY = 0.85  # per observation of the arm: it follows roughly its last 7 steps
MIN_SAMPLES = 1  # observations before an arm's measurement replaces the model's prediction
# A step this much faster than its arm's mean restarts the arm from it. Noise on a shared machine only
# ever adds time, so such a step says the arm's earlier ones were inflated: the first step of the
# engine's life (cold), a neighbour's burst. An arm sampled rarely (k = 0 while speculating: one try
# every 64 decisions) otherwise kept such a step for dozens of decisions and misjudged its k for them.
RESET_BELOW = 0.5
SETTLED = 3  # observations after which an arm sets the level of the unmeasured ones near it
# An arm measured a few times is mostly noise beside the settled arm's level and the model's shape: its own
# mean counts as its observations against this many of the prediction. In psd one pipeline step is one
# of two alternating halves (lopsided under Poisson arrivals: 1 and 6 rows), so a single step at k = 5-7
# read 24 ms or 46 ms where the settled k = 4 read 24, and auto flipped to, then away from, each of them.
PRIOR_WEIGHT = 3.0
# An unmeasured rows bucket borrows the measured/model ratio of a measured one at most this many times fewer or
# more rows away. At 64 rows the model (fitted on 1-16) put the psd pipeline at 1.3-2x what it took, as it had
# at 16 rows before those were measured (0.65-0.75x of the model there), and auto decoded 64 greedy rows merged
# for a whole round where the pipeline ran 1.25x faster.
BORROW_SPAN = 4.0
BORROW_LIMIT = 4.0  # a borrowed ratio stays within 1 / 4 .. 4 (a fit still forming can predict near zero)
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def rows_bucket(rows: int) -> int:
    """Rows on a grid of about 1.4x (16 and 13 rows share an arm; 16 and 24 do not)."""
    for edge in _BUCKETS:
        if rows <= edge:
            return edge
    return 2 ** math.ceil(math.log2(max(rows, 1)))


class PeriodTable:
    def __init__(self):
        # (family, bucket, k) -> [count, decayed weight, decayed seconds, decayed rows]
        self.arms: dict[tuple, list] = {}
        self.observations = 0

    @staticmethod
    def key(family: str, rows: int, k: int) -> tuple:
        return ("decode", rows_bucket(rows), 0) if k == 0 else (family, rows_bucket(rows), k)

    def observe(self, family: str, rows: int, k: int, tokens: int, seconds: float) -> None:
        """One step of `rows` running rows at this k took `seconds` of period and committed `tokens`
        (0: it failed or was preempted; not a measurement of the arm)."""
        if rows <= 0 or tokens <= 0 or not (seconds > 0.0 and math.isfinite(seconds)):
            return
        arm = self.arms.setdefault(self.key(family, rows, k), [0, 0.0, 0.0, 0.0])
        if arm[0] and seconds < RESET_BELOW * arm[2] / arm[1]:
            arm[:] = [0, 0.0, 0.0, 0.0]
        if arm[0] >= 3:  # a GC pause or a neighbour's burst must not swing the arm
            seconds = min(seconds, 3.0 * arm[2] / arm[1])
        arm[0] += 1
        arm[1] = DECAY * arm[1] + 1.0
        arm[2] = DECAY * arm[2] + seconds
        arm[3] = DECAY * arm[3] + rows
        self.observations += 1

    def count(self, family: str, rows: int, k: int) -> int:
        arm = self.arms.get(self.key(family, rows, k))
        return arm[0] if arm else 0

    def period(self, family: str, rows: int, k: int) -> float | None:
        """The arm's mean period in seconds, or None before MIN_SAMPLES observations."""
        arm = self.arms.get(self.key(family, rows, k))
        if arm is None or arm[0] < MIN_SAMPLES:
            return None
        return arm[2] / arm[1]

    def calibrated(self, family: str, rows: int, predicted: list[float], predict_at=None) -> list[float]:
        """Per k = 0..len(predicted) - 1, the period to expect. An unmeasured k: the model's prediction
        scaled by how far the model was off at the nearest measured k > 0, a settled one (SETTLED
        observations) where there is one (the model's shape, the table's level; a decode, with no draft
        call and no channel, is another operation and borrows nothing from the drafted arms). A measured k
        whose level comes from another arm: its own mean shrunk toward that scaled prediction, which counts
        as PRIOR_WEIGHT observations against the arm's own. predicted: the cost model's period at each k;
        predict_at(rows): the same at other rows, for a bucket with no arm measured (`_borrowed`)."""
        measured = {k: self.period(family, rows, k) for k in range(len(predicted))}
        measured = {k: p for k, p in measured.items() if p is not None}
        if predict_at is not None:
            predicted = list(predicted)
            if 0 not in measured:
                predicted[0] *= self._borrowed("decode", rows, [0], predict_at)
            if not any(k > 0 for k in measured):
                ratio = self._borrowed(family, rows, range(1, len(predicted)), predict_at)
                predicted[1:] = [p * ratio for p in predicted[1:]]
        drafted = [k for k in measured if k > 0]
        # the level comes from a settled arm where there is one: a single exploration step (a neighbour
        # tried once, on a noisy machine) set k = 1..3's level 15% above the k = 4 that ran 40 steps
        settled = [k for k in drafted if self.count(family, rows, k) >= SETTLED]
        drafted = settled or drafted
        out = []
        for k, p in enumerate(predicted):
            near = min(drafted, key=lambda m: (abs(m - k), m)) if k > 0 and drafted else None
            scaled = p * measured[near] / predicted[near] if near is not None and predicted[near] > 0.0 else p
            if k not in measured:
                out.append(scaled)
            elif near is None or near == k:
                out.append(measured[k])
            else:
                n = self.count(family, rows, k)
                out.append((n * measured[k] + PRIOR_WEIGHT * scaled) / (n + PRIOR_WEIGHT))
        return out

    def _borrowed(self, family: str, rows: int, ks, predict_at) -> float:
        """measured / predicted at the nearest rows bucket (within BORROW_SPAN) with an arm of `family` at one
        of `ks`, its most observed one, within BORROW_LIMIT; 1.0 where there is none. Predicted at the arm's
        own mean rows."""
        here = rows_bucket(rows)
        ks = set(ks)
        arms = [(key, arm) for key, arm in self.arms.items()
                if key[0] == family and key[2] in ks and key[1] != here and arm[0] >= MIN_SAMPLES
                and max(key[1], here) <= BORROW_SPAN * min(key[1], here)]
        if not arms:
            return 1.0
        key, arm = min(arms, key=lambda a: (abs(math.log(a[0][1] / here)), -a[1][0]))
        predicted = predict_at(max(1, round(arm[3] / arm[1])))
        if key[2] >= len(predicted) or predicted[key[2]] <= 0.0:
            return 1.0
        return min(BORROW_LIMIT, max(1.0 / BORROW_LIMIT, arm[2] / arm[1] / predicted[key[2]]))
