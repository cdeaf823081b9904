"""The goodput controller: before each step, how many tokens to draft (k = 0 included) and how many
of the drafted ones the target verifies (the budget C of spec/draft_lengths.py).

It maximises expected committed tokens per second: the tokens the acceptance model expects at k
(spec/cost_model.py, per request and position) over the period a step at k takes. The period is
the measured one where the scheduler has seen steps at that k for about this many rows
(spec/goodput.py: dispatch to dispatch, so the gRPC calls, the channel, the draft's catch-up and the
clients' share are in it), else the cost model's prediction, scaled by how far the model was off at
the nearest measured k (at rows never measured: at the nearest measured rows, goodput.BORROW_SPAN):
- sd: for the batch, k in 0..max_k by  sum_r E_r(k) / period_sd(b, k), the model's period being
  draft(b, k) + verify(b, b (k + 1)) + o_sd; k = 0 is a target-only decode (`verify(b, b) +
  o_decode`, with no draft call).
- psd: `merge` compares one decode of every row with the pipeline at each k (A verified while B is
  drafted, then the other way round; the model's cycle max(draft B, verify A) + max(draft A,
  verify B): a draft step about as long as the verify it hides); merged, the step decodes all rows
  at once. Otherwise the batch about to be drafted gets the best pipeline k.
Everything measured lives in `Learned`, which every policy feeds, a fixed k included, and which a
reconfigure hands on: a server that ran at k = 4 or target-only knows what those cost when auto
takes over, and auto's first steps need no warm-up; an auto that follows target-only serving starts
target-only (its first admission does not prefill the draft).
- the budget: with the draft's confidences, the (row, position) drafts ranked as select_lengths ranks
  them are kept while one more is expected to add tokens faster than the step makes them (its
  calibrated acceptance probability against the verify's cost of one more token).
With nothing measured, the first steps try a few k (0 included) so that every term of the fit is
identified (on rows with tokens left to gain from it: `_near_end`); then exploration keeps the
measurements current (see `_pick`; while target-only, its tries take at most TRY_SHARE of the time,
TryBudget), speculating needs SPECULATE_MARGIN better goodput than k = 0 and a change between two
k > 0 HYSTERESIS. Deterministic given its inputs; per step a few hundred float operations. A regime
change (speculating or not, held for REGIME_PERSIST decisions) is logged once at INFO.

Exactness is untouched: k and the budget depend on past steps and on draft-side information only.
"""

from __future__ import annotations

import logging
import time

from minedraft.config import AUTO_K
from minedraft.spec.cost_model import AcceptanceModel, OnlineCostModel
from minedraft.spec.draft_lengths import position_scores, select_lengths
from minedraft.spec.goodput import PeriodTable, rows_bucket
from minedraft.spec.workers import Verdict

log = logging.getLogger("minedraft.spec")

WARMUP_KS = (0, 1, 2, 4)  # one step each, in this order, before the model decides
WARMUP_MIN_LEFT = 2 * len(WARMUP_KS)  # warm-up tries wait for a row this many tokens from its max_tokens
EXPLORE_EVERY = 16  # a neighbour of the best k (cheap: it is nearly as good)
EXPLORE_IDLE_EVERY = 64  # target-only: the best k > 0 (dearer: the draft catches up on what it skipped)
SPECULATE_MARGIN = 0.05  # speculating must beat target-only by this much
KNOWN_TRIALS = 64  # drafts verified at position 1 (ever) before the acceptance counts as known
EXPLORE_PIPELINE_EVERY = 64  # psd while merged: three pipeline steps (dearer: half-batch steps)
# sd while target-only: a try is this many steps. Its first pays the draft's catch-up on the tokens it
# skipped, is not measured (Scheduler._dispatch_sd, StepRecord.catch_up) and alone said nothing of what
# speculating costs; at one row in process, single-step tries at k = 1 measured 8.3 ms a step where
# steady k = 1 takes about 6.7, and auto stayed target-only at 0.8x of fixed k = 3.
SD_TRY_BURST = 3
HYSTERESIS = 0.03
PIPELINE_VOTES = 2  # psd while merged: full checks in a row that must find the pipeline SPECULATE_MARGIN better
# ... unless one finds it this much better: the votes guard a close call against a noisy decode arm
# (at 16 prose rows the model put k = 4 at up to 1.19x merged where the two tied), and made a fresh
# auto decode every row for a check, a held answer (RECHECK_EVERY) and a second check, about ten steps
# of a 40-step round, where the arms carried over from earlier runs said the pipeline was 1.4x better
CLEAR_WIN = 0.25
RECHECK_EVERY = 8  # target-only at unchanged rows: the full goodput check every this many decisions (HeldCheck)
IDLE_BACKOFF_MAX = 16  # target-only tries back off to this many times their interval at most
TRY_SHARE = 0.005  # target-only serving: tries take at most this share of the time (TryBudget)
TRY_CREDIT_CAP_S = 0.03  # the most try time a long target-only stretch (or an idle server) banks
REGIME_PERSIST = 8  # decisions a new regime (speculating or not) must last before it is logged
MERGE = -1  # psd: decode every row in one step


class IdleExploration:
    """While target-only, when to try speculating again. A try is dear (the draft catches up on the
    tokens it skipped; psd: half-batch pipeline steps), and on a machine where speculation does not
    pay, trying every `base` decisions put 2-4 speculative steps into every 64-token round. So each try the model
    does not follow (it still picks target-only after it) doubles the interval, up to
    IDLE_BACKOFF_MAX x base; a decision for speculation starts again at base.
    burst: decisions in a row that one try lasts (psd: three pipeline steps)."""

    def __init__(self, base: int, burst: int = 1):
        self.base, self.burst = base, burst
        self.every, self.idle = base, 0

    def due(self, allowed: bool = True) -> bool:
        """One more target-only decision: whether it should try speculating instead. allowed: whether
        the time budget (TryBudget) has room for a try now; a try it has no room for waits for it."""
        self.idle += 1
        start = self.every - self.burst + 1
        if self.idle < start:
            return False
        if self.idle == start and not allowed:
            self.idle -= 1
            return False
        if self.idle >= self.every:  # the try's last decision: the next one waits twice as long
            self.idle, self.every = 0, min(2 * self.every, IDLE_BACKOFF_MAX * self.base)
        return True

    def reset(self) -> None:
        """The model chose to speculate: speculation pays here again, so tries come at base again,
        counted from when target-only resumes."""
        self.every, self.idle = self.base, 0


class IdleByRows:
    """An IdleExploration per rows bucket (goodput.rows_bucket). Whether speculation pays at one row
    says nothing about sixteen, and a try at sixteen rows is dear (the draft catches up on every
    row's skipped tokens: about four decode steps on the bundled pair). With one shared backoff the
    one-row steps of light traffic, where speculation may pay, reset it, and every burst of heavy
    traffic tried again every `base` decisions."""

    def __init__(self, base: int, budget: TryBudget, burst: int = 1):
        self.base, self.burst, self.budget = base, burst, budget
        self.buckets: dict[int, IdleExploration] = {}

    def due(self, rows: int) -> bool:
        """Whether this target-only decision at `rows` should try speculating: its bucket's turn, and
        room in the time budget shared by all buckets."""
        return self.at(rows).due(self.budget.allows())

    def at(self, rows: int) -> IdleExploration:
        bucket = rows_bucket(rows)
        if bucket not in self.buckets:
            self.buckets[bucket] = IdleExploration(self.base, self.burst)
        return self.buckets[bucket]


class TryBudget:
    """What target-only serving may spend on trying to speculate, in time: at most TRY_SHARE of it.
    IdleExploration says when a rows bucket wants a try; this says whether the server can afford one.
    A try is dear and its price varies: at two rows a try step with the draft's catch-up (it prefills
    every prompt it skipped: ~400 tokens each in the prose regime) took 17 ms where a decode took 5. Counted
    in decisions, tries cost what traffic made them cost: Poisson arrivals move through four rows buckets
    with a backoff each, and psd tries are three pipeline steps, so auto ran 3-6% behind ar there while
    auto with no tries at all ran level with it. Counted in time, tries cost at most TRY_SHARE of
    throughput, at any arrival pattern.
    Decisions are the clock: the time from one decision to the next belongs to the first one's step. A
    try's is debited whole (the tokens it made would have cost a decode some of it: the bound is loose
    in the safe direction); a target-only step's credits TRY_SHARE of it, up to TRY_CREDIT_CAP_S (a long
    target-only stretch banks a try or two, no more). An idle server (`pause`) neither spends nor saves.
    Until the acceptance is known (KNOWN_TRIALS) trying is learning: neither gated nor paid for."""

    def __init__(self, share: float = TRY_SHARE, cap_s: float = TRY_CREDIT_CAP_S):
        self.share, self.cap_s = share, cap_s
        self.clock = time.perf_counter
        self.credit_s = cap_s  # a fresh server may try at once
        self._since: float | None = None  # when the last decision was taken (None: paused)
        self._trying = False  # whether that decision was a try

    def elapse(self) -> None:
        """A decision is about to be taken: the time since the last one is paid for or saved."""
        now = self.clock()
        if self._since is not None:
            dt = now - self._since
            self.credit_s = min(self.cap_s, self.credit_s - dt if self._trying else self.credit_s + self.share * dt)
        self._since = now

    def allows(self) -> bool:
        return self.credit_s > 0.0

    def took(self, trying: bool) -> None:
        """What the decision just taken was: a try (speculating while target-only) or not."""
        self._trying = trying

    def pause(self) -> None:
        """Nothing left to run: the wait for new work counts for nothing."""
        self.elapse()
        self._since = None


class HeldCheck:
    """Target-only at unchanged rows (sd at k = 0, psd merged), the full goodput check runs again only every
    RECHECK_EVERY decisions. Nothing the decode steps measure in between can change the answer much, and a
    check is not free on the bundled pair: sd's ~50 us is 1.4% of a one-row decode step through the services
    (3.7 ms) and 2.4% in process; psd's merge check was 0.2 ms of a 7.5 ms step."""

    def __init__(self):
        self.key, self.age = None, 0  # (rows, k bound) of the last full check that held, decisions since

    def holds(self, key: tuple) -> bool:
        """Whether this decision may keep the last full check's answer (and count one more on it)."""
        if self.key == key and self.age < RECHECK_EVERY:
            self.age += 1
            return True
        return False

    def checked(self, key: tuple | None) -> None:
        """A full check ran; key None: its answer is not one to hold (speculating)."""
        self.key, self.age = key, 1


def make_controller(k, max_k: int, mode: str, draft=None, previous=None):
    """The scheduler's k policy: a SpeculationController for k = "auto" (with a draft), else FixedK.
    previous: the policy before a reconfigure. What it measured (this machine's costs, the traffic's
    acceptance, the goodput of each k) carries over, fixed k included, so that auto does not warm up
    again after a run at a fixed k."""
    learned = previous.learned if previous is not None else Learned(max_k)
    if k == AUTO_K and draft is not None and mode != "ar":
        c = SpeculationController(max_k, mode, capacity=draft.capacity_k, learned=learned)
        if isinstance(previous, SpeculationController):
            c.decisions = len(WARMUP_KS) + 1
        return c
    return FixedK(k if k != AUTO_K else max_k, learned)


def decode_verdict(target, proposal) -> Verdict:
    """psd: a batch drafted with k = 0 (no tokens) decodes target-only in its verify slot."""
    tokens = target.decode(proposal.request_ids)
    return Verdict(proposal.request_ids, [[t] for t in tokens], [0] * len(tokens),
                   compute_s=target.last_decode_compute_s, done_at=time.perf_counter())


class Learned:
    """What the controller knows, fed by every step in every mode (a fixed k too): the cost model,
    the acceptance model, the measured goodput per k, and the budget's calibration."""

    def __init__(self, max_k: int):
        self.costs = OnlineCostModel()
        self.acceptance = AcceptanceModel(max_k)
        self.periods = PeriodTable()
        self.calibration = [1.0, 1.0]  # budget: accepted drafts, summed scores of verified drafts
        # when target-only serving tries speculating again (kept across a reconfigure, as the rest)
        self.tries = TryBudget()  # what those tries may cost in all
        self.idle_sd = IdleByRows(EXPLORE_IDLE_EVERY, self.tries, burst=SD_TRY_BURST)
        self.idle_psd = IdleByRows(EXPLORE_PIPELINE_EVERY, self.tries, burst=3)
        # the last auto policy's answer (None: none decided yet), and per rows bucket. An auto that follows
        # starts from it, so that after target-only serving the first admission does not prefill the draft
        # for nothing (per bucket: a round of 16 requests ends at one row, where speculation may pay)
        self.target_only: bool | None = None
        self.target_only_at: dict[int, bool] = {}
        self._pending: tuple | None = None  # a decode step's record, until the next step starts

    def decided(self, rows: int, target_only: bool) -> None:
        """A full goodput check's answer at this many rows."""
        self.target_only = self.target_only_at[rows_bucket(rows)] = target_only

    def on_idle(self) -> None:
        """The scheduler ran out of work: what follows is a wait, no step's cost."""
        self.tries.pause()

    def on_step_start(self, admit_s: float) -> None:
        """A step begins: a decode step's period (its wall, up to this step, less admission) is known."""
        if self._pending is not None:
            record, t_end = self._pending
            self._pending = None
            period = record.wall_s + max(0.0, time.perf_counter() - t_end - admit_s)
            self.costs.add_overhead("decode", period - record.verify_s)

    def on_record(self, record, synchronous: bool = False) -> None:
        """A finished step's StepRecord (synchronous: a decode, whose period ends at the next step)."""
        if record.ride:  # its times are mostly a staged prompt's chunk, which no k changes
            return
        drafted = record.draft_rows > 0 and (record.k or 0) > 0
        verified = record.num_verified > 0
        both = drafted and verified and record.mode == "psd"
        if drafted and not record.catch_up:  # a catch-up's draft call is mostly the skipped tokens
            self.costs.add_draft(record.draft_rows, record.k, record.draft_s, overlap=both)
        if verified:
            self.costs.add_verify(record.num_verified, record.verify_tokens or record.num_verified,
                                  record.verify_s, overlap=both)
        if synchronous:
            self._pending = (record, time.perf_counter())
        elif both:
            self.costs.add_overhead("psd", record.wall_s - max(record.draft_s, record.verify_s))
        elif drafted and verified and not record.catch_up:
            self.costs.add_overhead("sd", record.wall_s - record.draft_s - record.verify_s)

    def on_period(self, family: str, rows: int, k: int, tokens: int, seconds: float) -> None:
        self.periods.observe(family, rows, k, tokens, seconds)

    def on_verdict(self, proposal, verdict) -> None:
        lengths = proposal.verify_lengths()
        if proposal.k <= 0:
            return
        self.acceptance.observe(verdict.request_ids, lengths, verdict.num_accepted)
        if proposal.confidence is not None and proposal.top_prob is not None:
            scores = position_scores(proposal.confidence, proposal.top_prob).tolist()
            predicted = sum(sum(row[:n]) for row, n in zip(scores, lengths))
            accepted = sum(min(a, n) for a, n in zip(verdict.num_accepted, lengths))
            c = self.calibration
            c[0], c[1] = 0.95 * c[0] + accepted, 0.95 * c[1] + predicted


class _Feeding:
    """Both policies pass what the scheduler measures on to their Learned."""

    learned: Learned

    def on_idle(self) -> None:
        self.learned.on_idle()

    def on_step_start(self, admit_s: float) -> None:
        self.learned.on_step_start(admit_s)

    def on_record(self, record, synchronous: bool = False) -> None:
        self.learned.on_record(record, synchronous)

    def on_period(self, family: str, rows: int, k: int, tokens: int, seconds: float) -> None:
        self.learned.on_period(family, rows, k, tokens, seconds)

    def on_verdict(self, proposal, verdict) -> None:
        self.learned.on_verdict(proposal, verdict)


class FixedK(_Feeding):
    """A fixed k: every batch drafts k tokens and every row verifies all of them (today's behaviour).
    It still feeds what it measures to `learned`, for an auto that may follow."""

    def __init__(self, k: int, learned: Learned | None = None):
        self.k = k
        self.learned = learned if learned is not None else Learned(max(k, 1))

    def bound(self) -> int:
        return self.k

    likely_k = bound

    def k_for(self, ids, requests) -> int:
        return self.k

    def psd_k_for(self, draft_ids, verify_ids, verify_k, requests) -> int:
        return self.k

    def merge(self, batches, requests, riding: bool = False) -> bool:
        return False

    def budget_for(self, proposal, requests, slack_s: float = 0.0):
        return None

    def drafts_soon(self, rows: int | None = None) -> bool:
        return True


class SpeculationController(_Feeding):
    # Per-row lengths under a budget: off by default. Measured in process on the bundled pair (one
    # process per setting, 4 prompts one at a time, best of 3 interleaved rounds; scripts/auto_probe.py):
    # auto 210 tok/s with the budget, 395 without, ar 367-380, fixed k = 2 335-359.
    # The budget drops drafts the draft already paid for, and the rows it keeps are the confident ones,
    # so the acceptance the model learns from them is too high for a full k: auto then drafts far too
    # many tokens. The machinery stays exact and tested; model-free drafts' own lengths still apply.
    use_budget = False

    def __init__(self, max_k: int, mode: str, capacity=None, learned: Learned | None = None):
        """max_k: auto's bound; capacity(): the draft's own (its nodes' --max-k), None when unbounded;
        learned: what earlier policies measured (make_controller passes it on)."""
        self.max_k, self.mode, self.capacity = max_k, mode, capacity
        self.learned = learned if learned is not None else Learned(max_k)
        self.learned.acceptance.grow(max_k)
        self.costs, self.acceptance, self.periods = self.learned.costs, self.learned.acceptance, self.learned.periods
        self.decisions = 0
        self._put_off = 0  # decisions at which a warm-up try waited for rows with tokens left (_near_end)
        self._deciding = False  # whether this policy has taken a decision yet
        # the k the model prefers (exploration aside); after target-only serving, 0 until it decides
        self.best: int | None = 0 if self.learned.target_only else None
        self.psd_k = 1  # psd: the k the last drafted batch got (a guess for the other batch's next draft)
        self._merged = bool(self.learned.target_only)
        self._rows_merged = 0  # psd: the rows of the last merge() decision
        self._votes = 0  # psd while merged: full checks in a row that found the pipeline better (PIPELINE_VOTES)
        self._merge_check, self._idle_check = HeldCheck(), HeldCheck()  # psd merged; sd at k = 0
        self._spec = 0  # sd: the best k > 0 at the last full check (what a try drafts)
        self._regime: bool | None = None  # speculating or not, as last logged
        self._flips = 0  # decisions in a row that disagreed with _regime
        self._curves: dict = {}
        self._curves_at = -1
        self.decide_s = 0.0  # time spent deciding (the controller must stay cheap)

    # -- the models' view -------------------------------------------------------------------------------
    def _curve(self, ids: list[str], requests, k_max: int) -> list[float]:
        """sum over rows of E_r(k), k = 0..k_max."""
        if self._curves_at != self.acceptance.steps:
            self._curves, self._curves_at = {}, self.acceptance.steps
        total = [0.0] * (k_max + 1)
        for rid in ids:
            req = requests.get(rid)
            cap = req.max_new_tokens - len(req.output_ids) if req is not None else None
            key = (rid, k_max, cap)
            c = self._curves.get(key)
            if c is None:
                c = self._curves[key] = self.acceptance.curve(rid, k_max, cap)
            for i in range(k_max + 1):
                total[i] += c[i]
        return total

    def _o(self, kind: str) -> float:
        o = self.costs.overhead
        return o.get(kind, o.get("sd", o.get("decode", 0.0)))

    def sd_time(self, n: int, k: int) -> float:
        if k == 0:
            return self.costs.verify(n, n) + self._o("decode")
        return self.costs.draft(n, k) + self.costs.verify(n, n * (k + 1)) + self._o("sd")

    def cycle_time(self, n_a: int, k_a: int, n_b: int, k_b: int) -> float:
        """psd: A verified (drafted with k_a) while B is drafted with k_b, then the other way round."""
        c, o = self.costs, self._o("psd")
        s1 = max(c.draft(n_b, k_b, overlap=n_a > 0), c.verify(n_a, n_a * (k_a + 1), overlap=k_b > 0))
        s2 = max(c.draft(n_a, k_a, overlap=n_b > 0), c.verify(n_b, n_b * (k_b + 1), overlap=k_a > 0))
        return s1 + s2 + 2 * o

    # -- deciding ---------------------------------------------------------------------------------------
    def bound(self) -> int:
        """The largest k a step may draft: auto's bound, within the draft's capacity."""
        capacity = self.capacity() if self.capacity is not None else None
        return min(self.max_k, capacity or self.max_k)

    def likely_k(self) -> int:
        """The k the next step will most likely draft (what the model prefers, exploration aside); the
        bound before it decided."""
        return self.bound() if self.best is None else min(self.best, self.bound())

    def _bound(self, max_k: int | None) -> int:
        bound = self.bound()
        return max(0, min(bound, max_k if max_k is not None else bound))

    def _warmup(self, k_max: int, family: str, rows: int) -> int | None:
        """The first decisions try a few k, unless the table already measured two of them here; once the
        cost model is fitted, only as far as the try budget goes (they are tries: TryBudget). A decision
        that put a try off (`_near_end`) does not count."""
        tried = self.decisions - self._put_off
        if tried >= len(WARMUP_KS) and self.costs.ready():  # the common case, first: it is every step's
            return None
        if self.costs.ready():
            measured = sum(self.periods.period(family, rows, k) is not None for k in range(k_max + 1))
            if measured >= 2 or not self.learned.tries.allows():  # rows not measured yet: tries, within their budget
                return None
        return min(WARMUP_KS[tried % len(WARMUP_KS)], k_max)

    def _pick(self, goodput: list[float], k_max: int, family: str, rows: int, ids: list[str], requests) -> int:
        """The best k, or on an exploration step another one. Speculating must beat k = 0 by
        SPECULATE_MARGIN (its costs outside the step: the draft's prefill at admission, its catch-up
        after target-only steps, the risk of a noisy estimate; target-only never loses to ar); among
        k > 0 a change needs HYSTERESIS. Exploring: while speculating, the least measured neighbour
        every EXPLORE_EVERY decisions and k = 0 every fourth time; while target-only, the best k > 0
        every EXPLORE_EVERY decisions until the acceptance is known, then from every
        EXPLORE_IDLE_EVERY decisions on, backing off while the tries do not pay (IdleExploration)."""
        spec = max(range(1, k_max + 1), key=lambda k: (goodput[k], -k), default=0)
        if spec and self.best is not None and 1 <= self.best <= k_max and \
                goodput[spec] <= goodput[self.best] * (1 + HYSTERESIS):
            spec = self.best
        best = spec if spec and goodput[spec] > goodput[0] * (1 + SPECULATE_MARGIN) else 0
        self.best, self._spec = best, spec
        if best == 0:
            return self._idle_choice(ids, requests)
        if self.decisions % EXPLORE_EVERY == EXPLORE_EVERY - 1:
            if (self.decisions // EXPLORE_EVERY) % 4 == 3:
                return 0
            near = [k for k in (best - 1, best + 1) if 1 <= k <= k_max]
            if near:
                return min(near, key=lambda k: (self.periods.count(family, rows, k), -goodput[k]))
        return best

    @staticmethod
    def _near_end(ids, requests) -> bool:
        """Whether every row is within WARMUP_MIN_LEFT tokens of its max_tokens. A warm-up try costs more
        than the decode it replaces (k + 1 tokens a row to verify; psd's half batches), and such rows
        end before a step at the k it finds could pay it back: the warm-up waits for rows with tokens
        left (target-only meanwhile, which never loses to ar). Issue 21's case, 8 tokens a request on a
        fresh Engine whose draft is never accepted: the tries cost psd 0.5 s, 10%, against ar."""
        for rid in ids:
            req = requests.get(rid)
            if req is None or req.max_new_tokens - len(req.output_ids) >= WARMUP_MIN_LEFT:
                return False
        return True

    def _paid_try(self) -> bool:
        """Whether a speculative step now is a try the TryBudget pays for: taken while target-only serving
        (or warming up) once the acceptance is known."""
        return self.learned.target_only is not False and self.acceptance.first_drafts >= KNOWN_TRIALS

    def _idle_choice(self, ids: list[str], requests) -> int:
        """Target-only: k = 0, or on a try the best k > 0 (see _pick). Not on rows about to end (_near_end):
        a try pays the draft's catch-up on every token it skipped, a whole prompt for a request admitted
        while target-only, and they end before a steady step measures anything. (psd: merge() the same.)"""
        if not self._spec or self._near_end(ids, requests):
            return 0
        rows = len(ids)
        if self.acceptance.first_drafts < KNOWN_TRIALS:  # as often as while speculating until it is known
            return self._spec if self.decisions % EXPLORE_EVERY >= EXPLORE_EVERY - SD_TRY_BURST else 0
        return self._spec if self.learned.idle_sd.due(rows) else 0

    def _sd_goodput(self, ids: list[str], requests, k_max: int) -> list[float]:
        """Expected tokens per second for k = 0..k_max: the acceptance model's tokens over the
        measured period where the table has the arm, else over the cost model's on the table's level."""
        n = len(ids)
        tokens = self._curve(ids, requests, k_max)
        periods = self.periods.calibrated("sd", n, self._sd_model(n, k_max),
                                          predict_at=lambda rows: self._sd_model(rows, k_max))
        return [tokens[k] / max(periods[k], 1e-9) for k in range(k_max + 1)]

    def _psd_goodput(self, batches: list[list[str]], requests, k_max: int) -> list[float]:
        """Expected tokens per second: [0] one decode of every row (merged), [k] the pipeline at k
        (one step verifies one batch: half a cycle)."""
        a, b = batches
        n = len(a) + len(b)
        ta, tb = self._curve(a, requests, k_max), self._curve(b, requests, k_max)
        periods = self.periods.calibrated("psd", n, self._psd_model(len(a), len(b), k_max),
                                          predict_at=lambda rows: self._psd_model(rows // 2, rows - rows // 2, k_max))
        return [n / max(periods[0], 1e-9)] + [(ta[k] + tb[k]) / 2 / max(periods[k], 1e-9) for k in range(1, k_max + 1)]

    def _sd_model(self, n: int, k_max: int) -> list[float]:
        """The cost model's period of an sd step of n rows at k = 0..k_max."""
        return [self.sd_time(n, k) for k in range(k_max + 1)]

    def _psd_model(self, n_a: int, n_b: int, k_max: int) -> list[float]:
        """The cost model's period of one merged decode of n_a + n_b rows, then of one pipeline step (half
        a cycle) at k = 1..k_max."""
        n = n_a + n_b
        return [self.costs.verify(n, n) + self._o("decode")] + \
            [self.cycle_time(n_a, k, n_b, k) / 2 for k in range(1, k_max + 1)]

    def k_for(self, ids: list[str], requests, max_k: int | None = None) -> int:
        """sd: how many tokens to draft for this batch (0: a target-only decode)."""
        t0 = time.perf_counter()
        self.learned.tries.elapse()
        self._deciding = True
        k_max, n = self._bound(max_k), len(ids)
        k, goodput = self._warmup(k_max, "sd", n), None
        if k and self._near_end(ids, requests):
            k, self._put_off = 0, self._put_off + 1
        if k is None and self.best == 0 and self._idle_check.holds((n, k_max)):
            k = self._idle_choice(ids, requests)
        elif k is None:
            goodput = self._sd_goodput(ids, requests, k_max)
            k = self._pick(goodput, k_max, "sd", n, ids, requests)
            self._idle_check.checked((n, k_max) if self.best == 0 else None)
            self.learned.decided(n, self.best == 0)
            if self.best:
                self.learned.idle_sd.at(n).reset()
            self._log_regime(n, goodput)
        self.learned.tries.took(k > 0 and self._paid_try())
        self._trace("sd", n, k, goodput)
        self.decisions += 1
        self.decide_s += time.perf_counter() - t0
        return k

    def psd_k_for(self, draft_ids: list[str], verify_ids: list[str], verify_k: int, requests,
                  max_k: int | None = None) -> int:
        """psd: how many tokens to draft for the batch about to be drafted, while the other batch is
        verified with verify_k. Warming up, 0 is tried too (the batch is not drafted; in its verify
        slot it decodes target-only); after that not drafting is `merge`'s choice, for every row."""
        t0 = time.perf_counter()
        k_max = self._bound(max_k)
        n = len(draft_ids) + len(verify_ids)
        # the pipeline's first step verifies nothing: the warm-up is judged at the rows merge() saw (at half
        # of them, a fresh auto found no arm and tried k = 0 on the first half of every pipeline start)
        k, goodput = self._warmup(k_max, "psd", n if verify_ids else max(n, self._rows_merged)), None
        if k is None and k_max > 0:
            goodput = self._psd_goodput([verify_ids, draft_ids], requests, k_max)
            goodput[0] = 0.0  # merge decides that
            k = self._pick(goodput, k_max, "psd", n, draft_ids + verify_ids, requests)
            # _pick's k = 0 exploration: in psd not drafting is merge()'s choice, for every row at once
            # (and a batch drafted with k = 1 explores a k nobody asked for): the best k instead
            k = k or self.best or 1
        self._trace("psd", n, k or 0, goodput)
        self.decisions += 1
        self.psd_k = k or 0
        self.decide_s += time.perf_counter() - t0
        return k or 0

    def merge(self, batches: list[list[str]], requests, max_k: int | None = None, riding: bool = False) -> bool:
        """psd: whether this step should decode every row at once instead (no k pays for the pipeline).
        A fresh server's first step does (it measures the decode); while merged, three steps run the
        pipeline again after EXPLORE_PIPELINE_EVERY decisions, then after ever longer runs while it
        does not pay (IdleExploration), and a check that finds the pipeline CLEAR_WIN better starts it
        at once. riding: a staged prompt's chunk rides on this step's forward. A merged psd
        does not start the pipeline then: its first step verifies nothing, so it would run the chunk
        alone while every row waits (a whole pass of a big target). Nor is it a decision (it measures
        the chunk); a pipeline already running goes on."""
        if riding and self._merged and self.decisions:
            return True
        t0 = time.perf_counter()
        self.learned.tries.elapse()
        self._deciding = True
        k_max = self._bound(max_k)
        ids, goodput = batches[0] + batches[1], None
        n = self._rows_merged = len(ids)
        if k_max == 0 or (self.decisions == 0 and self.periods.period("decode", n, 0) is None):
            merged = True  # a fresh server's first step measures the decode; one that knows it checks at once
        elif self._warmup(k_max, "psd", n) is not None:
            merged = self._near_end(ids, requests)
            self._put_off += int(merged)
        elif self._merged and self._merge_check.holds((n, k_max)):
            merged = self._near_end(ids, requests) or not self.learned.idle_psd.due(n)
        else:
            self._merge_check.checked((n, k_max))
            goodput = self._psd_goodput(batches, requests, k_max)
            ar, spec = goodput[0], max(range(1, k_max + 1), key=lambda k: goodput[k])
            # as sd: the pipeline must beat decoding every row by SPECULATE_MARGIN to start, in PIPELINE_VOTES
            # full checks in a row; it goes on while it beats it at all (a start costs the draft's catch-up
            # on every row). Measured on the bundled pair, c16 prose, through the services, alternated with
            # the code before (6-round focused runs): pipelined decisions 95 and 69 against 155 and 173,
            # auto/ar 0.95 and 0.96 against 0.85 and 0.94; c64 greedy, where the pipeline pays, 1.12 / 1.13.
            merged = goodput[spec] <= ar * (1.0 if not self._merged else 1 + SPECULATE_MARGIN)
            if self._merged and not merged:  # one draw of two noisy arms past the margin is not enough
                self._votes += 1
                merged = self._votes < PIPELINE_VOTES and goodput[spec] <= ar * (1 + CLEAR_WIN)
            else:
                self._votes = 0
            self.learned.decided(n, merged)
            self._log_regime(n, goodput, merged=merged, spec_k=spec)
            if not merged:
                self.learned.idle_psd.at(n).reset()
            elif not self._near_end(ids, requests) and self.learned.idle_psd.due(n):
                merged = False
        self.learned.tries.took(not merged and self._paid_try())
        self._trace("psd", n, "merged" if merged else "pipeline", goodput)
        if merged:
            self.decisions += 1
        self._merged = merged
        self.decide_s += time.perf_counter() - t0
        return merged

    def drafts_soon(self, rows: int | None = None) -> bool:
        """Whether requests admitted now should be prefilled on the draft too. Not while target-only
        (sd: k = 0; psd: merged): a request joins the draft before its first proposal instead, so that
        target-only serving does not pay the draft's prefill of every prompt. rows: how many will run
        once they are in; before this policy's first decision, the answer last found at that many rows
        (a round that ended speculating at one row says nothing about the next one's sixteen: on the
        bundled pair such a prefill added 25 ms to the 50 ms first token of 16 prose requests)."""
        known = self.learned.target_only_at.get(rows_bucket(rows)) if rows and not self._deciding else None
        if known is not None:
            return not known
        return not (self._merged if self.mode == "psd" else self.best == 0)

    def budget_for(self, proposal, requests, slack_s: float = 0.0) -> list[int] | None:
        """Per-row lengths for the proposal (None: verify every drafted token, e.g. no confidences, or
        the budget off: `use_budget`, see below).
        slack_s: verify time that costs nothing (psd: the other side's draft is longer)."""
        if not self.use_budget or proposal.confidence is None or proposal.top_prob is None or proposal.k <= 0:
            return None
        t0 = time.perf_counter()
        ids = proposal.request_ids
        caps = []
        for rid in ids:
            req = requests.get(rid)
            caps.append(max(0, req.max_new_tokens - len(req.output_ids) - 1) if req is not None else proposal.k)
        n, k = len(ids), proposal.k
        per_token = self.costs.per_token(overlap=self.mode == "psd")
        if not self.costs.ready() or per_token <= 0.0:
            budget = n * k
        else:
            cal = self.learned.calibration[0] / max(self.learned.calibration[1], 1e-9)
            scores = position_scores(proposal.confidence, proposal.top_prob).tolist()
            probs = sorted((min(1.0, cal * s) for r, row in enumerate(scores) for s in row[:caps[r]]), reverse=True)
            time_s = self.sd_time(n, 0) if self.mode == "sd" else self.costs.verify(n, n, overlap=True)
            time_s += self.costs.draft(n, k) if self.mode == "sd" else 0.0
            tokens, budget, free = float(n), 0, int(slack_s / per_token)
            for p in probs:
                if budget >= free and p * time_s <= per_token * tokens:
                    break
                budget += 1
                tokens += p
                time_s += per_token if budget > free else 0.0
        lengths = select_lengths(proposal.confidence, proposal.top_prob, budget, caps)
        self.decide_s += time.perf_counter() - t0
        return lengths

    # -- telling --------------------------------------------------------------------------------------
    def _trace(self, family: str, n: int, choice: int | str, goodput: list[float] | None) -> None:
        """One DEBUG line per decision (the gateway's --log-level DEBUG): what it chose, and the expected
        tokens per second of k = 0, 1, ... where it ran the full check (none: warm-up, or a held answer).
        Reading these beside the rounds of a bench run is how auto's losses to ar were found."""
        if log.isEnabledFor(logging.DEBUG):
            choice = f"k {choice}" if isinstance(choice, int) else choice  # k, or psd's merged / pipeline
            shown = "" if goodput is None else " goodput " + " ".join(f"{g:.0f}" for g in goodput)
            log.debug("decide %s: %d rows -> %s (best %s)%s", family, n, choice, self.best, shown)

    def _log_regime(self, n: int, goodput: list[float], merged: bool | None = None, spec_k: int | None = None) -> None:
        """One INFO line when speculation turns on or off (goodput[0]: target-only)."""
        spec_k = spec_k if spec_k is not None else max(range(1, len(goodput)), key=lambda k: goodput[k], default=0)
        if not spec_k:
            return
        speculating = not merged if merged is not None else self.best != 0
        if speculating == self._regime:
            self._flips = 0
            return
        self._flips += 1
        if self._regime is not None and self._flips < REGIME_PERSIST:
            return  # the batch shrinking at a round's end, or noise: not a regime yet
        self._flips = 0
        first = self._regime is None
        self._regime = speculating
        if first and speculating:
            return  # speculating is the starting assumption; say something when it stops paying
        old, new = (0, spec_k) if speculating else (spec_k, 0)
        ratio = self.costs.verify(n, n * (spec_k + 1)) / max(self.costs.verify(n, n), 1e-12)
        log.info("speculation: k %d -> %d at %d rows (verify %d tok/row %.1fx decode; expected %.2fx)",
                 old, new, n, spec_k + 1, ratio, goodput[spec_k] / max(goodput[0], 1e-12))
