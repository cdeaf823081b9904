"""The MineDraft latency model against hand-computed values, limits, inverses and Monte-Carlo."""

import dataclasses
import math
import random

import pytest

from minedraft.bench.simulation import simulate_tokens_per_step
from minedraft.spec.theory import (
    Prediction,
    acceptance_from_counts,
    alpha_from_mean_accepted_length,
    ar_step_time,
    expected_tokens_per_step,
    predict,
    psd_step_time,
    sd_step_time,
)

# --- expected tokens per step -------------------------------------------------------------


@pytest.mark.parametrize(
    "alpha,k,expected",
    [
        (0.5, 3, 1.875),  # 1 + .5 + .25 + .125
        (0.8, 4, 3.3616),  # 1 + .8 + .64 + .512 + .4096
        (0.6, 1, 1.6),
        (0.9, 2, 2.71),  # 1 + .9 + .81
        (0.3, 0, 1.0),  # no drafts: plain decoding
    ],
)
def test_expected_tokens_hand_values(alpha, k, expected):
    assert expected_tokens_per_step(alpha, k) == pytest.approx(expected, rel=1e-12)


def test_expected_tokens_matches_closed_form():
    for alpha in (0.1, 0.37, 0.5, 0.93):
        for k in (1, 2, 5, 8):
            closed = (1 - alpha ** (k + 1)) / (1 - alpha)
            assert expected_tokens_per_step(alpha, k) == pytest.approx(closed, rel=1e-12)


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_expected_tokens_limits(k):
    assert expected_tokens_per_step(0.0, k) == 1.0
    assert expected_tokens_per_step(1.0, k) == k + 1
    # continuous at alpha -> 1 (no 0/0 cancellation)
    assert expected_tokens_per_step(1 - 1e-12, k) == pytest.approx(k + 1, rel=1e-9)


def test_expected_tokens_rejects_bad_input():
    for alpha in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            expected_tokens_per_step(alpha, 3)
    for k in (-1, 2.5):
        with pytest.raises(ValueError):
            expected_tokens_per_step(0.5, k)


# --- step times ---------------------------------------------------------------------------


def test_step_times():
    assert sd_step_time(0.01, 0.05, 4) == pytest.approx(0.09)
    assert sd_step_time(0.01, 0.05, 4, overhead=0.002) == pytest.approx(0.092)
    # verify-bound and draft-bound PSD
    assert psd_step_time(0.01, 0.05, 4) == pytest.approx(0.05)
    assert psd_step_time(0.02, 0.05, 4, overhead=0.001) == pytest.approx(0.081)
    assert ar_step_time(0.04) == 0.04
    with pytest.raises(ValueError):
        sd_step_time(-1.0, 0.05, 4)
    with pytest.raises(ValueError):
        psd_step_time(0.01, 0.05, -1)


def test_psd_step_never_slower_than_sd_step_on_same_times():
    for t_d in (0.001, 0.01, 0.03):
        for t_v in (0.01, 0.05):
            for k in (1, 4, 8):
                assert psd_step_time(t_d, t_v, k) <= sd_step_time(t_d, t_v, k)


# --- predict ------------------------------------------------------------------------------


def test_predict_hand_worked_with_half_batch_times():
    # alpha=.8, k=4 -> E = 3.3616
    # SD : t_sd  = 4*.01 + .05 + .002           = .092
    # PSD: t_psd = max(4*.008, .03) + .004      = .036   (half-batch times)
    # AR : t_ar  = .04
    p = predict(
        t_draft=0.01,
        t_verify=0.05,
        t_target_decode=0.04,
        alpha=0.8,
        k=4,
        overhead_sd=0.002,
        overhead_psd=0.004,
        batch_size=8,
        t_draft_half=0.008,
        t_verify_half=0.03,
    )
    assert isinstance(p, Prediction)
    assert not p.psd_degenerates_to_sd
    assert p.tokens_per_step == pytest.approx(3.3616)
    assert p.step_time_ar == pytest.approx(0.04)
    assert p.step_time_sd == pytest.approx(0.092)
    assert p.step_time_psd == pytest.approx(0.036)
    assert p.throughput_ar == pytest.approx(8 / 0.04)  # 200
    assert p.throughput_sd == pytest.approx(8 * 3.3616 / 0.092)  # 292.31
    assert p.throughput_psd == pytest.approx(4 * 3.3616 / 0.036)  # 373.51
    # ratios: psd/sd = (.092/.036)/2 = 23/18; sd/ar = E*.04/.092; latency = 2*.036/.092 = 18/23
    assert p.psd_over_sd_throughput == pytest.approx(23 / 18)
    assert p.sd_over_ar_throughput == pytest.approx(3.3616 * 0.04 / 0.092)
    assert p.psd_over_ar_throughput == pytest.approx(p.psd_over_sd_throughput * p.sd_over_ar_throughput)
    assert p.time_per_token_sd == pytest.approx(0.092 / 3.3616)
    assert p.time_per_token_psd == pytest.approx(0.072 / 3.3616)
    assert p.psd_over_sd_latency == pytest.approx(18 / 23)
    # end-to-end: N tokens at N * time per token
    assert p.latency_s("sd", 100) == pytest.approx(100 * 0.092 / 3.3616)
    assert p.latency_s("psd", 100) == pytest.approx(100 * 0.072 / 3.3616)
    assert p.latency_s("ar", 100) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        p.latency_s("xx", 10)


def test_predict_half_times_default_to_full_times():
    # alpha=.5, k=3 -> E = 1.875; t_sd = 3*.01 + .05 = .08; t_psd = max(.03, .05) = .05
    p = predict(0.01, 0.05, 0.03, alpha=0.5, k=3, batch_size=4)
    assert p.step_time_sd == pytest.approx(0.08)
    assert p.step_time_psd == pytest.approx(0.05)
    assert p.throughput_sd == pytest.approx(4 * 1.875 / 0.08)
    assert p.throughput_psd == pytest.approx(2 * 1.875 / 0.05)
    assert p.psd_over_sd_throughput == pytest.approx(0.8)  # (.08/.05)/2
    assert p.psd_over_sd_latency == pytest.approx(1.25)  # 2*.05/.08
    assert p.sd_over_ar_throughput == pytest.approx(1.875 * 0.03 / 0.08)


def test_predict_balanced_equal_times_break_even():
    # k*t_draft == t_verify and equal half/full times: PSD's step is half SD's, but it serves half
    # the batch per step, so throughput and latency tie exactly.
    p = predict(0.01, 0.03, 0.02, alpha=0.7, k=3, batch_size=2)
    assert p.psd_over_sd_throughput == pytest.approx(1.0)
    assert p.psd_over_sd_latency == pytest.approx(1.0)


def test_predict_batch_of_one_degenerates_to_sd():
    p = predict(0.01, 0.05, 0.04, alpha=0.8, k=4, overhead_psd=1.0, batch_size=1)
    assert p.psd_degenerates_to_sd
    assert p.step_time_psd == p.step_time_sd
    assert p.throughput_psd == p.throughput_sd
    assert p.psd_over_sd_throughput == pytest.approx(1.0)
    assert p.psd_over_sd_latency == pytest.approx(1.0)


def test_predict_alpha_zero_and_one():
    # alpha=0: SD gains one token per (k t_d + t_v): slower than AR when t_v >= t_ar
    p0 = predict(0.01, 0.05, 0.05, alpha=0.0, k=4, batch_size=2)
    assert p0.tokens_per_step == 1.0
    assert p0.sd_over_ar_throughput == pytest.approx(0.05 / 0.09)
    p1 = predict(0.01, 0.05, 0.05, alpha=1.0, k=4, batch_size=2)
    assert p1.tokens_per_step == 5.0
    assert p1.sd_over_ar_throughput == pytest.approx(5 * 0.05 / 0.09)


def test_predict_rejects_bad_batch():
    with pytest.raises(ValueError):
        predict(0.01, 0.05, 0.04, alpha=0.8, k=4, batch_size=0)


# --- counts and inverse -------------------------------------------------------------------


def test_acceptance_from_counts():
    assert acceptance_from_counts(100, 73) == pytest.approx(0.73)
    assert acceptance_from_counts(0, 0) == 0.0
    assert acceptance_from_counts(8, 8) == 1.0
    with pytest.raises(ValueError):
        acceptance_from_counts(3, 4)
    with pytest.raises(ValueError):
        acceptance_from_counts(-1, 0)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.8, 0.97])
def test_alpha_inverse_roundtrip(alpha, k):
    mean_len = expected_tokens_per_step(alpha, k)
    assert alpha_from_mean_accepted_length(mean_len, k) == pytest.approx(alpha, abs=1e-9)


def test_alpha_inverse_hand_values_and_ends():
    assert alpha_from_mean_accepted_length(1.875, 3) == pytest.approx(0.5, abs=1e-10)
    assert alpha_from_mean_accepted_length(3.3616, 4) == pytest.approx(0.8, abs=1e-10)
    assert alpha_from_mean_accepted_length(1.0, 4) == 0.0
    assert alpha_from_mean_accepted_length(5.0, 4) == 1.0
    assert alpha_from_mean_accepted_length(1.0, 0) == 0.0
    for bad in (0.5, 5.5):
        with pytest.raises(ValueError):
            alpha_from_mean_accepted_length(bad, 4)


def test_rate_from_counts_is_not_alpha_under_the_model():
    # Under the i.i.d. model accepted/drafted = (E - 1)/k, which is below alpha.
    alpha, k = 0.8, 4
    e = expected_tokens_per_step(alpha, k)
    drafts = 1000
    rate = acceptance_from_counts(drafts * k, round(drafts * (e - 1)))
    assert rate == pytest.approx((e - 1) / k, abs=1e-3)
    assert rate < alpha
    assert alpha_from_mean_accepted_length(1 + rate * k, k) == pytest.approx(alpha, abs=1e-3)


# --- Monte-Carlo --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,k", [(0.5, 3), (0.8, 4), (0.95, 8)])
def test_monte_carlo_matches_formula(alpha, k):
    sim = simulate_tokens_per_step(alpha, k, steps=100_000, rng=random.Random(1234))
    assert sim == pytest.approx(expected_tokens_per_step(alpha, k), rel=0.01)


def test_monte_carlo_edges_and_seed():
    assert simulate_tokens_per_step(0.0, 4, steps=1000, rng=0) == 1.0
    assert simulate_tokens_per_step(1.0, 4, steps=1000, rng=0) == 5.0
    a = simulate_tokens_per_step(0.6, 3, steps=5000, rng=7)
    b = simulate_tokens_per_step(0.6, 3, steps=5000, rng=random.Random(7))
    assert a == b
    with pytest.raises(ValueError):
        simulate_tokens_per_step(0.5, 3, steps=0)


# --- the scheduler, simulated --------------------------------------------------------------------
from minedraft.bench.simulation import simulate  # noqa: E402
from minedraft.spec.theory import CostModel  # noqa: E402


def test_cost_model_through_two_points():
    c = CostModel.through(16, 4.0, 20.0, 8, 3.0, 14.0)
    assert c.draft(16) == pytest.approx(4.0) and c.draft(8) == pytest.approx(3.0)
    assert c.verify(16) == pytest.approx(20.0) and c.verify(8) == pytest.approx(14.0)
    assert c.draft(0) == 0.0 and c.verify(0) == 0.0
    flat = CostModel.through(8, 2.0, 5.0, 8, 2.0, 5.0)
    assert flat.verify(1) == flat.verify(64) == 5.0


def test_simulate_alpha_one_is_exact():
    # Every draft accepted: k + 1 tokens per verification, no tail. 16 requests of 1 + 5*3 tokens:
    # SD needs 3 steps of k*t_d + t_v; PSD verifies each half 3 times, overlapped after one fill.
    c = CostModel(0.0, 0.0, 2.0, 0.0)  # verify 2 s, draft free
    sd = simulate("sd", 16, 16, 16, 4, 1.0, c, trials=3)
    assert sd.steps == 3 and sd.makespan_s == pytest.approx(6.0) and sd.latency_mean_s == pytest.approx(6.0)
    psd = simulate("psd", 16, 16, 16, 4, 1.0, c, trials=3)
    assert psd.steps == 6 and psd.makespan_s == pytest.approx(12.0)  # a free draft hides nothing


def test_simulate_psd_hides_the_draft_when_balanced():
    # k * t_draft == t_verify and flat costs: PSD's step is max(...) = half of SD's step for the same
    # requests per half batch, so the paper protocol (PSD runs 2N) doubles the throughput in steady state.
    c = CostModel(1.0, 0.0, 4.0, 0.0)
    sd = simulate("sd", 64, 16, 33, 4, 1.0, c, trials=2)
    psd = simulate("psd", 64, 32, 33, 4, 1.0, c, trials=2)
    assert psd.throughput_tok_s / sd.throughput_tok_s == pytest.approx(2.0, rel=0.15)
    assert psd.latency_mean_s < sd.latency_mean_s


def test_simulate_tail_costs_steps():
    # With acceptance < 1 a round lasts until its slowest request: more steps than the mean predicts,
    # and more so for a larger batch.
    mean_steps = (64 - 1) / expected_tokens_per_step(0.8, 4)
    c = CostModel(0.0, 0.0, 1.0, 0.0)
    one = simulate("sd", 1, 1, 64, 4, 0.8, c, trials=300, seed=1)
    many = simulate("sd", 32, 32, 64, 4, 0.8, c, trials=100, seed=1)
    assert one.steps == pytest.approx(mean_steps, rel=0.08)
    assert many.steps > one.steps * 1.15


def test_simulate_prefill_stalls_both_workers_once_per_request():
    # Admission prefills on both workers and then the steps go on: with the same draws, a round lasts
    # exactly prefill x requests longer in either mode, and it weighs more on the faster one (PSD).
    c = CostModel(0.001, 0.0001, 0.01, 0.001)
    p = dataclasses.replace(c, prefill_per_request=0.007)
    for mode, running in (("sd", 16), ("psd", 32)):
        without = simulate(mode, 64, running, 64, 4, 0.85, c, trials=5, seed=2)
        with_prefill = simulate(mode, 64, running, 64, 4, 0.85, p, trials=5, seed=2)
        assert with_prefill.steps == without.steps
        assert with_prefill.makespan_s - without.makespan_s == pytest.approx(64 * 0.007)
        assert with_prefill.latency_mean_s > without.latency_mean_s

    def ratio(cost):
        return (simulate("psd", 64, 32, 64, 4, 0.85, cost, trials=5, seed=2).throughput_tok_s
                / simulate("sd", 64, 16, 64, 4, 0.85, cost, trials=5, seed=2).throughput_tok_s)

    assert 1.0 < ratio(p) < ratio(c)


def test_simulate_is_seeded_and_checks_inputs():
    c = CostModel(0.001, 0.0001, 0.01, 0.001, overhead=0.002)
    assert simulate("psd", 8, 8, 20, 4, 0.7, c, trials=20, seed=3) == simulate("psd", 8, 8, 20, 4, 0.7, c, trials=20,
                                                                              seed=3)
    with pytest.raises(ValueError, match="mode"):
        simulate("ar", 8, 8, 20, 4, 0.7, c)
    with pytest.raises(ValueError, match="max_running"):
        simulate("sd", 8, 0, 20, 4, 0.7, c)
