"""The goodput controller (k = auto): its online cost and acceptance model, its decisions on synthetic
cost curves (k = 0 when drafting cannot pay, k > 0 when it pays), per-row lengths under its budget, and
greedy output equal to target-only through Engine and the services whatever it decides."""

from __future__ import annotations

import random

import pytest
import torch

from minedraft.spec.controller import (
    CLEAR_WIN,
    IDLE_BACKOFF_MAX,
    KNOWN_TRIALS,
    PIPELINE_VOTES,
    SD_TRY_BURST,
    TRY_SHARE,
    WARMUP_MIN_LEFT,
    IdleExploration,
    SpeculationController,
)
from minedraft.spec.cost_model import AcceptanceModel, OnlineCostModel
from minedraft.spec.metrics import SpecDecodeMetrics, StepRecord
from minedraft.spec.theory import CostModel, expected_tokens_per_step
from minedraft.spec.workers import Proposal, Verdict


def test_cost_model_verify_per_token_and_its_old_callers():
    old = CostModel(0.001, 0.0001, 0.01, 0.001)
    assert old.verify(8) == old.verify(8, 5) == pytest.approx(0.018)  # no per-token term: as before
    c = CostModel(0.001, 0.0001, 0.01, 0.001, verify_per_token=0.0005)
    assert c.verify(8, 5) == pytest.approx(0.01 + 0.008 + 0.0005 * 40)
    assert c.decode(8) == c.verify(8, 1) and c.verify(0, 5) == 0.0


# -- the online model ---------------------------------------------------------------------------------
def true_verify(rows, tokens):
    return 0.004 + 0.0002 * rows + 0.00015 * tokens


def true_draft(rows, k):
    return 0.0007 + k * (0.0015 + 0.00005 * rows)


def test_online_cost_model_fits_a_synthetic_curve():
    m = OnlineCostModel()
    rng = random.Random(0)
    for _ in range(6):
        for rows in (2, 8, 16, 32):
            for k in (0, 1, 2, 4):
                noise = 1 + 0.02 * (rng.random() - 0.5)
                m.add_verify(rows, rows * (k + 1), true_verify(rows, rows * (k + 1)) * noise)
                if k:
                    m.add_draft(rows, k, true_draft(rows, k) * noise)
    for rows in (1, 4, 16, 24, 48):
        for k in (0, 3, 6):
            assert m.verify(rows, rows * (k + 1)) == pytest.approx(true_verify(rows, rows * (k + 1)), rel=0.05)
            if k:
                assert m.draft(rows, k) == pytest.approx(true_draft(rows, k), rel=0.05)
    cm = m.cost_model()
    assert cm.verify_per_token == pytest.approx(0.00015, rel=0.1) and cm.verify_fixed == pytest.approx(0.004, rel=0.1)
    assert cm.draft_fixed == pytest.approx(0.0015, rel=0.1)
    # it follows drift: the target gets twice as slow
    for _ in range(40):
        for rows in (2, 8, 16, 32):
            for k in (0, 2):
                m.add_verify(rows, rows * (k + 1), 2 * true_verify(rows, rows * (k + 1)))
    assert m.verify(16, 16) == pytest.approx(2 * true_verify(16, 16), rel=0.05)


def geometric_accepts(rng, alpha, k):
    n = 0
    while n < k and rng.random() < alpha:
        n += 1
    return n


def test_acceptance_per_position_and_per_request():
    a = AcceptanceModel(4)
    rng = random.Random(1)
    for _ in range(300):
        a.observe(["good", "bad"], [4, 4], [geometric_accepts(rng, 0.9, 4), geometric_accepts(rng, 0.3, 4)])
    rates = a.rates()
    assert len(rates) == 4 and all(0.4 < r < 0.95 for r in rates)
    assert a.factor("good") > 1.2 and a.factor("bad") < 0.7 and a.factor("unseen") == 1.0
    good, bad = a.curve("good", 4), a.curve("bad", 4)
    assert good[4] == pytest.approx(expected_tokens_per_step(0.9, 4), rel=0.15)
    assert bad[4] == pytest.approx(expected_tokens_per_step(0.3, 4), rel=0.15)
    assert a.curve("good", 4, cap=2)[4] == pytest.approx(good[1])  # one draft at most, then the bonus


# -- decisions on a synthetic machine ----------------------------------------------------------------
class Req:
    def __init__(self):
        self.max_new_tokens, self.output_ids = 10**9, [1]


class World:
    """A machine with known costs and i.i.d. acceptance alpha; runs the controller's decisions."""

    def __init__(self, alpha, verify=true_verify, draft=true_draft, rows=16, seed=0, hidden=lambda n, k: 0.0):
        """hidden(rows, k): what a step costs beyond the workers' compute (calls, channel, clients),
        seen only in the step's period, as the scheduler measures it."""
        self.alpha, self.verify, self.draft, self.rng = alpha, verify, draft, random.Random(seed)
        self.hidden = hidden
        self.ids = [f"r{i}" for i in range(rows)]
        self.requests = {rid: Req() for rid in self.ids}

    def goodput(self, k, n=None):
        n = n or len(self.ids)
        t = self.verify(n, n) if k == 0 else self.draft(n, k) + self.verify(n, n * (k + 1))
        return n * expected_tokens_per_step(self.alpha, k) / (t + self.hidden(n, k))

    def verdict(self, ids, k, c):
        accepted = [geometric_accepts(self.rng, self.alpha, k) for _ in ids]
        c.on_verdict(Proposal(ids, k), Verdict(ids, [[0] * (a + 1) for a in accepted], accepted))
        return sum(accepted) + len(ids)

    def run_sd(self, c, steps=200):
        ks, n = [], len(self.ids)
        for _ in range(steps):
            k = c.k_for(self.ids, self.requests)
            c.on_step_start(0.0)
            if k == 0:
                t = self.verify(n, n)
                c.on_record(StepRecord("sd", t, verify_s=t, num_verified=n, verify_tokens=n, k=0), synchronous=True)
                c.on_period("decode", n, 0, n, t + self.hidden(n, 0))
            else:
                tokens = self.verdict(self.ids, k, c)
                d, v = self.draft(n, k), self.verify(n, n * (k + 1))
                c.on_record(StepRecord("sd", d + v, draft_s=d, verify_s=v, num_verified=n, verify_tokens=n * (k + 1),
                                       k=k, draft_rows=n))
                c.on_period("sd", n, k, tokens, d + v + self.hidden(n, k))
            ks.append(k)
        return ks

    def run_psd(self, c, steps=200):
        """The pipeline as the scheduler runs it: merged steps decode every row; otherwise verify A
        (drafted last step with k_a) while B is drafted with the k the controller picks."""
        a, b = self.ids[: len(self.ids) // 2], self.ids[len(self.ids) // 2:]
        k_a, merged, ks = None, 0, []
        for _ in range(steps):
            c.on_step_start(0.0)
            if c.merge([a, b], self.requests):
                if k_a is None:
                    n = len(self.ids)
                    t = self.verify(n, n)
                    c.on_record(StepRecord("psd", t, verify_s=t, num_verified=n, verify_tokens=n, k=0),
                                synchronous=True)
                    c.on_period("decode", n, 0, n, t)
                    merged += 1
                    ks.append(0)
                    continue
                if k_a:
                    self.verdict(a, k_a, c)
                v = self.verify(len(a), len(a) * (k_a + 1))
                c.on_record(StepRecord("psd", v, verify_s=v, num_verified=len(a), verify_tokens=len(a) * (k_a + 1)))
                k_a = None
                continue
            k_b = c.psd_k_for(b, a if k_a is not None else [], k_a or 0, self.requests)
            d = self.draft(len(b), k_b)
            v = self.verify(len(a), len(a) * ((k_a or 0) + 1)) if k_a is not None else 0.0
            tokens = self.verdict(a, k_a, c) if k_a else (len(a) if k_a is not None else 0)
            over = k_a is not None and k_b > 0
            wall = max(d, v) * (1.1 if over else 1)
            c.on_record(StepRecord("psd", wall, draft_s=d, verify_s=v,
                                   num_verified=len(a) if k_a is not None else 0,
                                   verify_tokens=len(a) * ((k_a or 0) + 1), k=k_b, draft_rows=len(b) if k_b else 0))
            if k_a and k_a == k_b:
                c.on_period("psd", len(self.ids), k_b, tokens, wall)
            ks.append(k_b)
            a, b, k_a = b, a, k_b
        return ks, merged


def best_fixed(world, max_k=8):
    return max(range(max_k + 1), key=world.goodput)


def test_sd_picks_k0_when_nothing_is_accepted():
    world, c = World(alpha=0.02), SpeculationController(8, "sd")
    checks = []
    full_check = c._sd_goodput
    c._sd_goodput = lambda *a: (checks.append(1), full_check(*a))[1]
    ks = world.run_sd(c)
    assert c.best == 0 and ks[-50:].count(0) >= 45  # exploration aside, target-only
    # target-only at unchanged rows: the full goodput check once every RECHECK_EVERY decisions
    assert len(checks) <= 200 // 8 + 10


def test_sd_picks_k0_when_the_draft_is_as_slow_as_the_target():
    world = World(alpha=0.6, draft=lambda rows, k: k * true_verify(rows, rows))
    c = SpeculationController(8, "sd")
    world.run_sd(c)
    assert best_fixed(world) == 0 and c.best == 0


@pytest.mark.parametrize("alpha,rows", [(0.8, 1), (0.8, 16), (0.75, 4), (0.9, 32)])
def test_sd_speculates_when_it_pays_and_comes_close_to_the_best_fixed_k(alpha, rows):
    # (each world's best k beats k = 0 by 15% or more: well beyond SPECULATE_MARGIN and the noise of
    # the acceptance estimate; where the gain is within them, staying target-only is the design)
    world, c = World(alpha=alpha, rows=rows), SpeculationController(8, "sd")
    world.run_sd(c, steps=300)
    opt = best_fixed(world)
    assert opt > 0 and c.best > 0
    assert world.goodput(c.best) >= 0.97 * world.goodput(opt)


def test_psd_merges_when_drafting_cannot_pay_and_pipelines_when_it_does():
    c = SpeculationController(8, "psd")
    ks, merged = World(alpha=0.02).run_psd(c, steps=200)
    assert merged >= 150  # one decode of every row, the pipeline only explored now and then
    c = SpeculationController(8, "psd")
    ks, merged = World(alpha=0.85).run_psd(c, steps=200)
    assert merged <= 10 and sum(k > 0 for k in ks[-50:]) >= 45


def test_psd_explores_only_neighbours_of_its_best_k():
    """_pick explores k = 0 every fourth exploration; in psd not drafting is merge()'s choice (for every row at
    once), and the pipeline used to draft that batch with k = 1 instead: a k far from the best that nobody
    asked for, one batch in 64."""
    c = SpeculationController(8, "psd")
    ks, merged = World(alpha=0.85).run_psd(c, steps=400)
    assert merged <= 10 and c.best >= 3
    steady = [k for k in ks[40:] if k]
    assert steady and min(steady) >= c.best - 1, sorted(set(steady))


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_the_warm_up_waits_for_rows_with_tokens_left(mode):
    """A warm-up try costs more than a decode; rows within WARMUP_MIN_LEFT tokens of their max_tokens end
    before it can pay back: those steps stay target-only (sd k = 0, psd merged), and the tries start
    once a row has tokens left."""
    world, c = World(alpha=0.8, rows=8), SpeculationController(8, mode)
    for req in world.requests.values():
        req.max_new_tokens = WARMUP_MIN_LEFT  # one token out already: WARMUP_MIN_LEFT - 1 left
    if mode == "sd":
        ks = world.run_sd(c, steps=12)
        assert ks == [0] * 12
    else:
        ks, merged = world.run_psd(c, steps=12)
        assert merged == 12
    world.requests["r3"].max_new_tokens = WARMUP_MIN_LEFT + 1  # one row with room: the warm-up goes on
    ks = world.run_sd(c, steps=8) if mode == "sd" else world.run_psd(c, steps=8)[0]
    assert any(k > 0 for k in ks)


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_target_only_tries_wait_for_rows_with_tokens_left(mode):
    """A try (speculating while target-only) pays the draft's catch-up on every token it skipped: the whole
    prompt of a request admitted target-only. At the end of a 16-request prose round on the bundled pair
    (services) a psd try joined 15 rows (~400 prompt tokens each) to the draft for the ~4 tokens each had
    left, and that round ran at 0.85x of `ar` where auto had decoded target-only throughout. Rows within
    WARMUP_MIN_LEFT tokens of their end are not tried on, as the warm-up is not."""
    world, c = World(alpha=0.02, rows=8), SpeculationController(8, mode)
    run = (lambda n: world.run_sd(c, steps=n)) if mode == "sd" else (lambda n: world.run_psd(c, steps=n)[0])
    run(300)  # nothing is accepted: target-only
    assert c.learned.target_only
    c.learned.idle_sd.due = c.learned.idle_psd.due = lambda rows: True  # every decision is a try's turn
    c.learned.tries.allows = lambda: True
    c.acceptance.first_drafts = KNOWN_TRIALS
    for req in world.requests.values():
        req.max_new_tokens = WARMUP_MIN_LEFT  # one token out already: WARMUP_MIN_LEFT - 1 left
    assert not any(run(20))
    world.requests["r3"].max_new_tokens = WARMUP_MIN_LEFT + 1  # one row with room: tries go on
    assert any(run(20))


def test_psd_starts_its_pipeline_only_when_two_checks_in_a_row_find_it_better():
    """Two noisy arms compared with a margin: one draw past it (a decode arm that read a few slow steps)
    started the pipeline at 16 prose rows on the bundled pair, where merged decodes were as fast, and the
    pipeline then ran while it beat merged at all. Merged, it takes PIPELINE_VOTES full checks in a row."""
    world, c = World(alpha=0.6, rows=16), SpeculationController(8, "psd")
    a, b = world.ids[:8], world.ids[8:]
    c.decisions, c._merged = 10, True  # past the warm-up, merged
    c._warmup = lambda *args: None
    c._merge_check.holds = lambda key: False  # a full check at every decision
    c.learned.idle_psd.due = lambda rows: False  # no exploration tries
    better, worse = [1000.0] + [1100.0] * 8, [1000.0] + [1010.0] * 8
    draws = iter([better, worse, better, better, better])
    c._psd_goodput = lambda *args: list(next(draws))
    assert [c.merge([a, b], world.requests) for _ in range(5)] == [True, True, True, False, False]
    assert PIPELINE_VOTES == 2


def test_idle_tries_back_off_and_start_again_when_speculation_pays():
    idle = IdleExploration(base=4, burst=2)
    tries = [i for i in range(200) if idle.due()]
    # bursts of 2 at the end of intervals 4, 8, 16, 32, 64 (the cap: 16 x 4), 64
    assert tries == [2, 3, 10, 11, 26, 27, 58, 59, 122, 123, 186, 187]
    assert idle.every == IDLE_BACKOFF_MAX * 4
    idle.reset()
    assert [i for i in range(8) if idle.due()] == [2, 3]


def test_target_only_serving_tries_speculation_ever_more_rarely():
    # where nothing is accepted, the tries (each dear: the draft catches up) thin out: over the last
    # 1,500 of 2,000 decisions at most two of SD_TRY_BURST steps each (the interval doubles per try up to
    # 16 x 64 decisions)
    ks = World(alpha=0.02).run_sd(c := SpeculationController(8, "sd"), steps=2000)
    assert c.best == 0 and sum(k > 0 for k in ks[500:]) <= 2 * SD_TRY_BURST
    ks, merged = World(alpha=0.02).run_psd(SpeculationController(8, "psd"), steps=2000)
    assert sum(k > 0 for k in ks[500:]) <= 2 * 3  # a psd try: three pipeline steps


def test_light_traffic_where_speculation_pays_does_not_reset_the_tries_of_heavy_traffic():
    # Speculation pays at one row and loses at sixteen (a hidden cost per speculative step). Traffic
    # alternates: 20 one-row decisions, then 64 at sixteen rows. Each rows bucket backs off on its own,
    # so the sixteen-row tries thin out (about 4 decode steps each on the bundled pair: the draft
    # catches up on every row); with one shared backoff the one-row steps reset it, one try a burst.
    light, heavy = World(alpha=0.9, rows=1), World(alpha=0.9, rows=16, hidden=lambda n, k: 0.015 if k else 0.0)
    assert best_fixed(light) > 0 and best_fixed(heavy) == 0
    c = SpeculationController(8, "sd")
    heavy_ks = []
    for _ in range(24):
        light.run_sd(c, steps=20)
        heavy_ks.append(heavy.run_sd(c, steps=64))
    assert c.learned.idle_sd.at(16).every > c.learned.idle_sd.at(1).every
    tries = sum(k > 0 for ks in heavy_ks[8:] for k in ks)  # the last 16 bursts: 1,024 decisions
    assert tries <= 3  # one shared backoff: 16


def share_of_time_in_tries(mode: str, budget: bool) -> float:
    """Poisson-like traffic where nothing is accepted: the rows move through 12 buckets, 20 decisions at
    each. On a fake clock a decode step takes 5 ms and a try 20 ms (the draft catches up on the rows it
    skipped). The share of serving time that went into tries after the first 1,000 decisions (learning)."""
    c = SpeculationController(8, mode)
    now, step, spent, total, decisions = [0.0], [0.0], [0.0], [0.0], [0]
    c.learned.tries.clock = lambda: now[0]
    if not budget:
        c.learned.tries.allows = lambda: True

    def timed(decide, is_try):
        def wrapped(*args, **kwargs):
            now[0] += step[0]  # the last decision's step ran until this one
            if decisions[0] >= 1000:
                total[0] += step[0]
                spent[0] += step[0] if tried[0] else 0.0
            decisions[0] += 1
            out = decide(*args, **kwargs)
            tried[0] = is_try(out)
            step[0] = 0.020 if tried[0] else 0.005
            return out
        return wrapped

    tried = [False]
    if mode == "sd":
        c.k_for = timed(c.k_for, lambda k: k > 0)
    else:
        c.merge = timed(c.merge, lambda m: not m)
    rng = random.Random(3)
    worlds = {n: World(alpha=0.02, rows=n, seed=n) for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)}
    for _ in range(400):
        w = worlds[rng.choice(list(worlds))]
        w.run_sd(c, steps=20) if mode == "sd" else w.run_psd(c, steps=20)
    return spent[0] / total[0]


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_tries_take_at_most_their_share_of_serving_time_whatever_the_traffic(mode):
    # Each rows bucket backs off on its own (IdleByRows), so traffic that moves through many buckets
    # tried in each of them: through the services at Poisson arrivals auto ran 3-6% behind ar, and level
    # with it once it tried nothing. The time budget bounds what all buckets' tries cost together.
    assert share_of_time_in_tries(mode, budget=True) <= TRY_SHARE * 1.5
    assert share_of_time_in_tries(mode, budget=False) >= TRY_SHARE * 2.5  # without it: 1.6% (sd), 4.5% (psd)


def test_acceptance_follows_a_change_of_traffic_within_a_few_steps_at_many_rows():
    # Code traffic (most drafts accepted) turns to prose (few). Decayed per step only, 16-row steps took
    # ~30 steps to show it, half a 64-token round, and psd kept pipelining on the old acceptance.
    a = AcceptanceModel(4)
    rows = [f"r{i}" for i in range(16)]
    for _ in range(100):
        a.observe(rows, [4] * 16, [4] * 16)
    assert a.rates()[0] > 0.95
    steps = 0
    while a.rates()[0] >= 0.3 and steps < 100:
        a.observe(rows, [4] * 16, [0] * 16)
        steps += 1
    assert steps <= 12
    one = AcceptanceModel(4)  # at one row a step is one draft: the counts still span ~30 steps
    for _ in range(100):
        one.observe(["r"], [4], [4])
    for _ in range(10):
        one.observe(["r"], [4], [0])
    assert one.rates()[0] > 0.5


def test_acceptance_is_known_from_drafts_ever_verified_not_the_decayed_count():
    # At one row the decayed count levels off near 1 / (1 - DECAY) = 33 drafts: it never reaches the
    # 64 that make the acceptance known, and target-only serving explored every 16 decisions for good.
    a = AcceptanceModel(4)
    for _ in range(500):
        a.observe(["r"], [4], [2])
    assert a.trials[0] < 40 and a.first_drafts == 500


@pytest.mark.parametrize("alpha,rows,hidden_s", [(0.9, 16, 0.0015), (0.9, 1, 0.0005)])
def test_sd_follows_measured_goodput_where_the_cost_model_is_blind(alpha, rows, hidden_s):
    # Over the services each drafted token costs time the workers do not report (gRPC, the channel):
    # the fit of compute times alone would draft too many tokens; the measured periods do not.
    world = World(alpha=alpha, rows=rows, hidden=lambda n, k: hidden_s * k)
    c = SpeculationController(8, "sd")
    world.run_sd(c, steps=300)
    blind = World(alpha=alpha, rows=rows)
    assert best_fixed(world) < best_fixed(blind)  # the hidden cost matters to the answer
    assert world.goodput(c.best) >= 0.97 * world.goodput(best_fixed(world))


def test_sd_goes_target_only_when_a_hidden_cost_eats_the_gain():
    world = World(alpha=0.7, rows=16, hidden=lambda n, k: 0.006 if k else 0.0)
    assert best_fixed(world) == 0 and best_fixed(World(alpha=0.7, rows=16)) > 0
    c = SpeculationController(8, "sd")
    ks = world.run_sd(c, steps=200)
    assert c.best == 0 and ks[-50:].count(0) >= 45


def test_a_much_faster_step_restarts_its_arm():
    from minedraft.spec.goodput import PeriodTable

    table = PeriodTable()
    table.observe("sd", 1, 0, 1, 0.200)  # the engine's first step: cold
    assert table.period("sd", 1, 0) == pytest.approx(0.200)
    table.observe("sd", 1, 0, 1, 0.004)  # noise only adds time: the first one was inflated
    assert table.period("sd", 1, 0) == pytest.approx(0.004)
    table.observe("sd", 1, 0, 1, 0.005)  # an ordinary spread is averaged, not a restart
    assert 0.004 < table.period("sd", 1, 0) < 0.005


def test_an_arm_measured_once_is_shrunk_toward_the_settled_arms_level():
    from minedraft.spec.goodput import PRIOR_WEIGHT, PeriodTable

    table = PeriodTable()
    for _ in range(10):
        table.observe("psd", 8, 4, 20, 0.020)  # the settled arm: the model (10 ms at k = 4) is 2x off
    predicted = [0.008, 0.006, 0.007, 0.009, 0.010, 0.011, 0.012]
    assert table.calibrated("psd", 8, predicted)[6] == pytest.approx(0.024)  # unmeasured: shape x level
    table.observe("psd", 8, 6, 20, 0.046)  # one step at k = 6, the dear half of a lopsided pipeline
    periods = table.calibrated("psd", 8, predicted)
    assert periods[4] == pytest.approx(0.020)  # the settled arm keeps its own mean
    assert periods[6] == pytest.approx((0.046 + PRIOR_WEIGHT * 0.024) / (1 + PRIOR_WEIGHT))
    for _ in range(40):  # measured often, the arm's own mean takes over
        table.observe("psd", 8, 6, 20, 0.030)
    assert table.calibrated("psd", 8, predicted)[6] == pytest.approx(0.030, rel=0.03)


def test_rows_never_measured_borrow_the_models_error_from_the_nearest_measured_rows():
    """A fresh rows bucket is judged on the model scaled by how far it was off at the nearest measured bucket
    (within BORROW_SPAN): at 64 rows the model, fitted on fewer, put the psd pipeline at 1.3-2x what it took,
    and auto decoded a round of 64 greedy rows merged where the pipeline ran 1.25x faster."""
    from minedraft.spec.goodput import BORROW_LIMIT, BORROW_SPAN, PeriodTable

    def model(rows):  # decode, then k = 1..3: linear in rows
        return [0.001 * rows, 0.002 * rows, 0.003 * rows, 0.004 * rows]

    table = PeriodTable()
    assert table.calibrated("psd", 64, model(64), predict_at=model) == pytest.approx(model(64))  # nothing to borrow
    for _ in range(5):
        table.observe("psd", 16, 3, 30, 0.6 * 0.004 * 16)  # the pipeline at 16 rows: 0.6x of the model
        table.observe("decode", 16, 0, 16, 1.5 * 0.001 * 16)  # a decode: 1.5x
    periods = table.calibrated("psd", 64, model(64), predict_at=model)
    assert periods == pytest.approx([1.5 * 0.064, 0.6 * 0.128, 0.6 * 0.192, 0.6 * 0.256])
    assert table.calibrated("psd", 64, model(64)) == pytest.approx(model(64))  # no predict_at: the model alone
    far = int(16 * BORROW_SPAN * 2)  # too far to borrow from
    assert table.calibrated("psd", far, model(far), predict_at=model) == pytest.approx(model(far))
    table.observe("psd", 64, 2, 60, 0.9 * 0.003 * 64)  # 64 rows measured: its own level, nothing borrowed
    periods = table.calibrated("psd", 64, model(64), predict_at=model)
    assert periods[1:] == pytest.approx([0.9 * 0.128, 0.9 * 0.192, 0.9 * 0.256])
    table.observe("decode", 24, 0, 24, 0.024)

    def tiny(rows):  # a fit still forming predicts nearly nothing: the ratio stays within BORROW_LIMIT
        return [x * 1e-6 for x in model(rows)]

    assert table.calibrated("sd", 32, tiny(32), predict_at=tiny)[0] == pytest.approx(BORROW_LIMIT * tiny(32)[0])


def test_a_cold_first_target_only_step_does_not_keep_auto_speculating():
    # Target-only pays here, but the first k = 0 step (the warm-up's, the engine's first) took 30x its
    # time. While speculating, k = 0 is tried once every 64 decisions: the arm must not keep that step.
    first = [True]

    def hidden(n, k):
        if k:
            return 0.006
        if first[0]:
            first[0] = False
            return 30 * true_verify(n, n)
        return 0.0

    world = World(alpha=0.7, rows=16, hidden=hidden)
    c = SpeculationController(8, "sd")
    ks = world.run_sd(c, steps=300)
    assert c.best == 0 and ks[-50:].count(0) >= 45


def test_auto_after_fixed_runs_starts_from_what_they_measured():
    from minedraft.spec.controller import FixedK, make_controller

    class Draft:
        capacity_k = None

    world = World(alpha=0.7, rows=16, hidden=lambda n, k: 0.006 if k else 0.0)
    fixed = make_controller(4, 8, "sd", Draft())
    assert isinstance(fixed, FixedK)
    world.run_sd(fixed, steps=10)  # a run at k = 4 ...
    ar = make_controller(4, 8, "ar", Draft(), previous=fixed)
    world.run_sd(FixedKAt0(ar), steps=10)  # ... and one target-only
    auto = make_controller("auto", 8, "sd", Draft(), previous=ar)
    assert auto.learned is fixed.learned
    ks = world.run_sd(auto, steps=20)
    assert ks.count(0) >= 18  # no warm-up at k = 1, 2, 4: it knows k = 0 wins


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_auto_after_target_only_auto_starts_target_only(mode):
    """Its first admission must not prefill the draft (drafts_soon) when the last auto found that
    speculation does not pay; a cold start assumes it does."""
    from minedraft.spec.controller import make_controller

    class Draft:
        capacity_k = None

    first = make_controller("auto", 8, mode, Draft())
    assert first.drafts_soon()  # nothing known: speculating is the starting assumption
    world = World(alpha=0.02)
    world.run_sd(first) if mode == "sd" else world.run_psd(first)
    assert first.learned.target_only
    ar = make_controller(4, 8, "ar", Draft(), previous=first)
    again = make_controller("auto", 8, mode, Draft(), previous=ar)
    assert not again.drafts_soon()
    ks = world.run_sd(again, steps=20) if mode == "sd" else world.run_psd(again, steps=20)[0]
    assert again.learned.target_only and not again.drafts_soon()
    paying = make_controller("auto", 8, mode, Draft())
    World(alpha=0.9).run_sd(paying, steps=100) if mode == "sd" else World(alpha=0.9).run_psd(paying, steps=100)
    assert paying.learned.target_only is False
    assert make_controller("auto", 8, mode, Draft(), previous=paying).drafts_soon()
    assert ks.count(0) >= 20 - SD_TRY_BURST or mode == "psd"  # one try at most


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_the_first_admission_follows_what_was_found_at_its_rows(mode):
    """A round of 16 requests served target-only ends at one row, where speculation may pay, so the last
    answer was "speculate". The next round's first admission of 16 must not prefill the draft for
    nothing (on the bundled pair that prefill took the first token of 16 prose prompts from 50 to 75
    ms); one of 1 row must."""
    from minedraft.spec.controller import make_controller

    class Draft:
        capacity_k = None

    world = World(alpha=0.02, rows=16)
    c = make_controller("auto", 8, mode, Draft())
    world.run_sd(c, steps=100) if mode == "sd" else world.run_psd(c, steps=100)
    assert c.learned.target_only_at[16] is True
    c.learned.decided(1, False)  # the round's tail: one row, speculating
    following = make_controller("auto", 8, mode, Draft(), previous=make_controller(4, 8, "ar", Draft(), previous=c))
    assert not following.drafts_soon(16) and following.drafts_soon(1)
    assert following.drafts_soon()  # rows unknown: the last answer
    world.run_sd(following, steps=1) if mode == "sd" else world.run_psd(following, steps=1)
    assert not following.drafts_soon(1)  # once deciding: the regime it runs in (target-only at 16 rows)


class FixedKAt0:
    """ar mode as the scheduler runs it: decodes, fed to the policy like any step."""

    def __init__(self, policy):
        self.policy = policy

    def k_for(self, ids, requests):
        return 0

    def __getattr__(self, name):
        return getattr(self.policy, name)


def test_the_controller_is_deterministic_and_cheap():
    runs = []
    for _ in range(2):
        c = SpeculationController(8, "sd")
        runs.append(World(alpha=0.7, seed=3).run_sd(c, steps=150))
    assert runs[0] == runs[1]
    assert c.decide_s / c.decisions < 5e-4  # well under 1% of a step of tens of milliseconds


def test_budget_keeps_the_likely_drafts():
    world, c = World(alpha=0.7, rows=2), SpeculationController(4, "sd")
    world.run_sd(c, steps=60)
    conf = torch.tensor([[0.97, 0.96, 0.95, 0.95], [0.05, 0.05, 0.05, 0.05]])
    assert c.budget_for(Proposal(world.ids, 4, confidence=conf, top_prob=conf.clone()), world.requests) is None
    c.use_budget = True  # off by default (see SpeculationController.use_budget)
    conf = torch.tensor([[0.97, 0.96, 0.95, 0.95], [0.05, 0.05, 0.05, 0.05]])
    proposal = Proposal(world.ids, 4, confidence=conf, top_prob=conf.clone())
    lengths = c.budget_for(proposal, world.requests)
    assert lengths[0] > lengths[1] and lengths[0] >= 2 and lengths[1] <= 1
    assert c.budget_for(Proposal(world.ids, 4), world.requests) is None  # no confidences: every token
    world.requests["r0"].max_new_tokens = 3  # two tokens left: at most one draft, then the bonus
    assert c.budget_for(proposal, world.requests)[0] <= 1


# -- the metrics -----------------------------------------------------------------------------------------
def test_k_histogram_in_stats_and_prometheus_survives_folding():
    from gateway.grpc_api import stats_to_proto
    from gateway.prometheus_metrics import GatewayMetrics

    m, g = SpecDecodeMetrics(k=8), GatewayMetrics()
    m.MAX_KEPT_STEPS = 10
    ks = [0, 3, 3, 0, 2, 0, 5] * 6
    for k in ks:
        m.add_step(StepRecord("psd", 0.01, num_verified=4, k=k))
        g.on_step(m)
    m.add_step(StepRecord("ar", 0.01, num_verified=4))  # ar: no choice, not counted
    g.on_step(m)
    assert m.k_steps == {"psd": [ks.count(k) for k in range(6)]}
    assert m.k_share("psd", 0) == pytest.approx(ks.count(0) / len(ks))
    stats = stats_to_proto(m, "psd")
    assert list(stats.k_steps["psd"].steps_at_k) == m.k_steps["psd"]
    assert stats.k_steps["psd"].share_k0 == pytest.approx(m.k_share("psd"))
    count = g.registry.get_sample_value("minedraft:spec_decode_k_count", {"mode": "psd"})
    zeros = g.registry.get_sample_value("minedraft:spec_decode_k_bucket", {"mode": "psd", "le": "0.0"})
    assert count == len(ks) and zeros == ks.count(0)
    assert g.registry.get_sample_value("minedraft:spec_decode_k_sum", {"mode": "psd"}) == sum(ks)


# -- lossless whatever it decides ---------------------------------------------------------------------
def bundled_prompts():
    from minedraft.assets import load_heldout_prompts

    return load_heldout_prompts(10)


@pytest.fixture(scope="module")
def target_only():
    from minedraft import Engine, SamplingParams

    with Engine(mode="ar") as engine:
        return [r.token_ids for r in engine.generate(bundled_prompts(), SamplingParams(max_tokens=40))]


class Scripted(SpeculationController):
    """The controller's feeding, with decisions that walk every path: k = 0 (sd: a decode; psd: the
    batch is not drafted), merged psd steps, pipeline restarts, ks up to max_k, and requests admitted
    while target-only (the draft prefills them before their first proposal)."""

    KS = (0, 2, 0, 3, 1, 4, 0, 0, 2)
    MERGES = (True, False, False, True, True, False, False, False, False, True, False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.i = self.j = 0

    def k_for(self, ids, requests, max_k=None):
        self.i += 1
        return min(self.KS[self.i % len(self.KS)], self.bound())

    psd_k_for = lambda self, *args, **kwargs: self.k_for(None, None)  # noqa: E731

    def merge(self, batches, requests, max_k=None, riding=False):
        self.j += 1
        return self.MERGES[self.j % len(self.MERGES)]

    def drafts_soon(self, rows=None):  # admissions to the target alone, joining the draft at their first proposal
        return (self.i + self.j) % 3 != 0


@pytest.mark.parametrize("mode", ["sd", "psd"])
@pytest.mark.parametrize("scripted", [False, True])
def test_greedy_with_auto_equals_target_only(target_only, mode, scripted):
    from minedraft import Engine, SamplingParams

    with Engine(mode=mode) as engine:  # num_speculative_tokens="auto": the default
        assert engine.scheduler.k == "auto"
        if scripted:
            engine.scheduler.controller = Scripted(8, mode)
        prompts = bundled_prompts()
        params = SamplingParams(max_tokens=40)
        ids = {engine.add_request(p, params): i for i, p in enumerate(prompts[:4])}
        done, pending = {}, list(enumerate(prompts))[4:]
        while engine.has_unfinished() or pending:  # the rest arrive while the first ones run
            for req in engine.step():
                if req.finished:
                    done[ids[req.request_id]] = req.output_ids
            for i, p in pending[:2]:
                ids[engine.add_request(p, params)] = i
            pending = pending[2:]
        assert [done[i] for i in range(len(prompts))] == target_only
        steps = engine.metrics.k_steps[mode]
        assert sum(steps) > 0
        if scripted:
            assert steps[0] > 0 and len(steps) > 3  # target-only steps and drafted ones both ran


def test_engine_auto_bounds_and_reconfigure():
    from minedraft import Engine

    with pytest.raises(ValueError, match="^max_k:"):
        Engine(max_k=0)
    with pytest.raises(ValueError, match="^num_speculative_tokens:"):
        Engine(num_speculative_tokens="fast")
    with Engine(mode="sd", max_k=3) as engine:
        assert engine.scheduler.controller.bound() == 3
        engine.scheduler.reconfigure("psd", 2)
        assert engine.scheduler.k == 2 and not isinstance(engine.scheduler.controller, SpeculationController)
        engine.scheduler.reconfigure(None, "auto")
        assert isinstance(engine.scheduler.controller, SpeculationController)
        assert engine.frontend.model_info().auto_k
        costs = engine.scheduler.controller.costs
        engine.scheduler.reconfigure("sd", None)  # auto to auto: what it measured carries over
        assert engine.scheduler.controller.costs is costs and engine.scheduler.controller.mode == "sd"


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_the_wait_for_new_work_is_no_cost_of_the_last_k(mode):
    # A one-row server: each request's last step is followed by a wait for the client's next request.
    # That wait must not enter the last step's period or record (it did: the arm of whichever k ran
    # when requests ended looked dearer, and auto flipped between k = 0 and speculating at one row).
    import time

    from minedraft import Engine, SamplingParams

    with Engine(mode=mode) as engine:
        learned = engine.scheduler.controller.learned
        periods, walls = [], []
        observe, record = learned.on_period, learned.on_record
        learned.on_period = lambda *a: (periods.append(a[-1]), observe(*a))[1]
        learned.on_record = lambda r, synchronous=False: (walls.append(r), record(r, synchronous))[1]
        for prompt in bundled_prompts()[:3]:
            engine.add_request(prompt, SamplingParams(max_tokens=12))
            while engine.has_unfinished():
                engine.step()
            time.sleep(0.3)  # the client thinks
        engine.add_request(bundled_prompts()[3], SamplingParams(max_tokens=4))
        while engine.has_unfinished():
            engine.step()
        learned.on_step_start(0.0)
        assert periods and max(periods) < 0.2
        async_walls = [r.wall_s for r in walls if (r.k or 0) > 0]
        assert not async_walls or max(async_walls) < 0.2
        assert max(learned.costs.overhead.values(), default=0.0) < 0.1


def test_every_decision_is_traced_at_debug(caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="minedraft.spec"):
        World(alpha=0.02).run_sd(SpeculationController(8, "sd"), steps=40)
        World(alpha=0.85).run_psd(SpeculationController(8, "psd"), steps=40)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decide ")]
    assert sum(m.startswith("decide sd: 16 rows -> k ") for m in lines) == 40
    assert any(m.startswith("decide psd: 16 rows -> merged") for m in lines)
    assert any(m.startswith("decide psd: 8 rows -> k ") for m in lines)  # the pipeline drafts half the rows
    checked = [m for m in lines if " goodput " in m]
    assert checked and all(len(m.split(" goodput ")[1].split()) == 9 for m in checked)  # k = 0..8


def test_a_clear_win_starts_the_pipeline_at_once_and_a_known_decode_needs_no_first_merged_step():
    """The votes guard a close call. A fresh auto whose arms carried over from earlier runs found the
    pipeline 1.4x better and still decoded every row for about ten steps (a first merged step, a check,
    a held answer, a second check): a quarter of a 16-request round."""
    world = World(alpha=0.85, rows=16)
    first = SpeculationController(8, "psd")
    world.run_psd(first, steps=200)  # the pipeline pays here: its arms and the decode's are measured
    first.learned.target_only = True  # the last answer came from a round's tail, at one row
    again = SpeculationController(8, "psd", learned=first.learned)
    assert again._merged  # it starts merged, as after target-only serving ...
    ks, merged = world.run_psd(again, steps=20)
    assert merged == 0 and ks[0] > 0  # ... and pipelines from its first step
    # a close call still takes PIPELINE_VOTES checks in a row (test above); a clear one does not
    c = SpeculationController(8, "psd")
    c.decisions, c._merged = 10, True
    c._warmup = lambda *args: None
    c._merge_check.holds = lambda key: False
    c.learned.idle_psd.due = lambda rows: False
    c._psd_goodput = lambda *args: [1000.0] + [1000.0 * (1 + CLEAR_WIN) + 1.0] * 8
    assert c.merge([world.ids[:8], world.ids[8:]], world.requests) is False
