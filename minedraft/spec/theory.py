"""The MineDraft latency model: what AR, SD and PSD should cost, from a few measured times.

Pure Python (no torch), so benchmarks, plots and tests can use it anywhere.

Notation
--------
``alpha``     probability that one draft token is accepted, i.i.d. per position (the standard
              model of Leviathan et al. 2023; real acceptance decays along the draft, so fit
              ``alpha`` with :func:`alpha_from_mean_accepted_length`, not from the raw rate).
``k``         number of speculative (draft) tokens per step.
``t_draft``   time of ONE draft forward (one token for the whole batch).
``t_verify``  time of one target forward over the ``k + 1`` positions of the whole batch.
``t_target_decode``  time of one ordinary target decode step (one token per request).
``E``         expected tokens a request gains per verification,
              ``E = sum_{i=0..k} alpha^i = (1 - alpha^(k+1)) / (1 - alpha)``
              (the accepted prefix, plus the bonus/correction token the target always adds).

Step times
----------
* AR:  ``t_ar  = t_target_decode``; each request gains 1 token per step.
* SD:  ``t_sd  = k * t_draft + t_verify + overhead_sd``; draft and verify run one after the other
  on the same batch; each request gains ``E`` tokens per step.
* PSD: ``t_psd = max(k * t_draft, t_verify) + overhead_psd``; the running requests are split into
  two half-batches A and B, and in one step the target verifies one half while the draft model (on
  its own device) drafts the other, then they swap. The draft latency is hidden behind the verify
  (or vice versa), so the step costs the larger of the two.

See :func:`predict` for throughput and latency, and the assumptions behind them, and
:class:`CostModel` for a step's cost as a function of the batch size. The scheduler simulated on
that cost curve (round tails, a Monte-Carlo check of ``E``) is in :mod:`minedraft.bench.simulation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Prediction",
    "acceptance_from_counts",
    "alpha_from_mean_accepted_length",
    "CostModel",
    "ar_step_time",
    "expected_tokens_per_step",
    "predict",
    "psd_step_time",
    "sd_step_time",
]


def _check_alpha_k(alpha: float, k: int) -> None:
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")


def _check_times(**times: float) -> None:
    for name, value in times.items():
        if not value >= 0.0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Expected tokens per verification with ``k`` drafts, each accepted i.i.d. with prob. ``alpha``.

    ``E = 1 + alpha + alpha^2 + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)``:
    position ``i`` (1-based) counts iff the first ``i`` drafts are all accepted (prob. ``alpha^i``),
    and the target always adds one token (correction on rejection, bonus after ``k`` accepts).
    Limits: ``alpha = 0`` gives 1 (plain decoding), ``alpha -> 1`` gives ``k + 1``.
    The geometric sum is evaluated term by term, which is exact at both ends and has no
    cancellation near ``alpha = 1``.
    """
    _check_alpha_k(alpha, k)
    total, term = 0.0, 1.0
    for _ in range(int(k) + 1):
        total += term
        term *= alpha
    return total


def sd_step_time(t_draft: float, t_verify: float, k: int, overhead: float = 0.0) -> float:
    """Time of one standard speculative-decoding step: ``k * t_draft + t_verify + overhead``.

    ``t_draft`` is the time of ONE draft forward; the ``k`` drafts are sequential.
    """
    _check_times(t_draft=t_draft, t_verify=t_verify, overhead=overhead)
    _check_alpha_k(0.0, k)
    return k * t_draft + t_verify + overhead


def psd_step_time(t_draft: float, t_verify: float, k: int, overhead: float = 0.0) -> float:
    """Time of one PSD step: ``max(k * t_draft, t_verify) + overhead``.

    The draft model drafts one half-batch (``k`` sequential forwards) while the target verifies the
    other half-batch on another device; the step ends when both are done. Pass the half-batch
    times here.
    """
    _check_times(t_draft=t_draft, t_verify=t_verify, overhead=overhead)
    _check_alpha_k(0.0, k)
    return max(k * t_draft, t_verify) + overhead


def ar_step_time(t_target_decode: float) -> float:
    """Time of one autoregressive step of the target alone (one token per request)."""
    _check_times(t_target_decode=t_target_decode)
    return float(t_target_decode)


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` expects for AR, SD and PSD. Times in seconds, throughput in tokens/s.

    ``time_per_token_*`` is the mean time between two tokens of ONE request (inter-token latency);
    the end-to-end latency of an ``N``-token request is ``N * time_per_token_*`` (see
    :meth:`latency_s`).
    """

    alpha: float
    k: int
    batch_size: int
    tokens_per_step: float  # E, per request per verification
    step_time_ar: float
    step_time_sd: float
    step_time_psd: float
    throughput_ar: float
    throughput_sd: float
    throughput_psd: float
    time_per_token_ar: float
    time_per_token_sd: float
    time_per_token_psd: float
    psd_over_sd_throughput: float  # > 1: PSD serves more tokens/s than SD
    sd_over_ar_throughput: float  # > 1: SD serves more tokens/s than AR
    psd_over_ar_throughput: float
    psd_over_sd_latency: float  # < 1: a PSD request finishes sooner than an SD one
    psd_degenerates_to_sd: bool  # batch_size == 1: one half-batch is empty, PSD runs as SD

    def latency_s(self, mode: str, num_tokens: int) -> float:
        """Expected end-to-end decode latency of one request of ``num_tokens`` tokens in ``mode``.

        ``num_tokens * time_per_token``: the expected number of steps ``N / E`` (ignoring the
        rounding up of the last step and the ``max_tokens`` cut) times the time between two
        verifications of that request. Prefill is not modelled.
        """
        per_token = {
            "ar": self.time_per_token_ar,
            "sd": self.time_per_token_sd,
            "psd": self.time_per_token_psd,
        }
        if mode not in per_token:
            raise ValueError(f"mode must be one of {sorted(per_token)}, got {mode!r}")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens!r}")
        return num_tokens * per_token[mode]


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return math.inf if num > 0.0 else math.nan
    return num / den


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0.0 else math.inf


def predict(
    t_draft: float,
    t_verify: float,
    t_target_decode: float,
    alpha: float,
    k: int,
    overhead_sd: float = 0.0,
    overhead_psd: float = 0.0,
    batch_size: int = 1,
    t_draft_half: float | None = None,
    t_verify_half: float | None = None,
) -> Prediction:
    """Predict step time, throughput and latency of AR, SD and PSD for ``batch_size`` requests.

    Inputs: ``t_draft`` (one draft forward) and ``t_verify`` (one ``k+1``-position target forward)
    are measured on the FULL batch of ``batch_size`` requests, as SD runs it; ``t_target_decode`` is
    one AR decode step of the full batch. ``t_draft_half`` / ``t_verify_half`` are the same times on
    a HALF batch (``batch_size / 2`` requests), which is what PSD runs; when omitted they default to
    the full-batch times, i.e. the memory-bound regime where a decode-sized forward costs about the
    same for ``B`` and ``B/2`` rows (true for small batches; for large, compute-bound batches pass
    the measured half-batch times, which are then smaller). ``overhead_*`` is any per-step fixed
    cost (RPCs, scheduling, sampling) added to the step time.

    With ``E = expected_tokens_per_step(alpha, k)``:

    Throughput (tokens/s, all requests together):
        AR:   ``B / t_ar``                      (every request gains 1 token per step)
        SD:   ``B * E / t_sd``                  (every request gains E tokens per step)
        PSD:  ``(B/2) * E / t_psd``             (each step verifies ONE half-batch of B/2 requests)
    so ``psd/sd = (t_sd / t_psd) / 2`` when half- and full-batch times are equal: PSD beats SD
    in throughput only when ``2 * max(k t_d', t_v') + o_psd < k t_d + t_v + o_sd``, i.e. when the
    half-batch forwards are cheaper than the full ones, or when the overlap hides enough.
    Odd ``B`` is treated as two halves of ``B/2`` on average.

    Latency (time between two tokens of one request; an ``N``-token request takes
    ``N * time_per_token``):
        AR:   ``t_ar``
        SD:   ``t_sd / E``                      (E tokens every step)
        PSD:  ``2 * t_psd / E``                 (a request is verified every OTHER step: between two
                                                 of its verifications the other half-batch gets one
                                                 step, during which this one is being drafted)
    so ``psd/sd latency = 2 * t_psd / t_sd``.

    ``batch_size == 1``: one half-batch is empty and PSD degenerates to plain SD (the design's
    rule), so the PSD fields then equal the SD ones and ``psd_degenerates_to_sd`` is True. Use
    :func:`psd_step_time` directly for the raw two-batch formula.

    Ignored by the model: prefill, admission and finishing (batches are assumed full and
    balanced), the variance of accepted lengths within a batch, and any slowdown of a device that
    runs both jobs (PSD assumes draft and target on separate devices).
    """
    _check_alpha_k(alpha, k)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    k, batch_size = int(k), int(batch_size)
    t_draft_half = t_draft if t_draft_half is None else t_draft_half
    t_verify_half = t_verify if t_verify_half is None else t_verify_half

    e = expected_tokens_per_step(alpha, k)
    t_ar = ar_step_time(t_target_decode)
    t_sd = sd_step_time(t_draft, t_verify, k, overhead_sd)
    degenerate = batch_size == 1

    thr_ar = _rate(batch_size, t_ar)
    thr_sd = _rate(batch_size * e, t_sd)
    tpt_ar = t_ar
    tpt_sd = t_sd / e
    if degenerate:
        t_psd, thr_psd, tpt_psd = t_sd, thr_sd, tpt_sd
    else:
        t_psd = psd_step_time(t_draft_half, t_verify_half, k, overhead_psd)
        thr_psd = _rate(batch_size / 2 * e, t_psd)
        tpt_psd = 2.0 * t_psd / e

    return Prediction(
        alpha=alpha,
        k=k,
        batch_size=batch_size,
        tokens_per_step=e,
        step_time_ar=t_ar,
        step_time_sd=t_sd,
        step_time_psd=t_psd,
        throughput_ar=thr_ar,
        throughput_sd=thr_sd,
        throughput_psd=thr_psd,
        time_per_token_ar=tpt_ar,
        time_per_token_sd=tpt_sd,
        time_per_token_psd=tpt_psd,
        psd_over_sd_throughput=_ratio(thr_psd, thr_sd),
        sd_over_ar_throughput=_ratio(thr_sd, thr_ar),
        psd_over_ar_throughput=_ratio(thr_psd, thr_ar),
        psd_over_sd_latency=_ratio(tpt_psd, tpt_sd),
        psd_degenerates_to_sd=degenerate,
    )


def acceptance_from_counts(num_draft_tokens: int, num_accepted_tokens: int) -> float:
    """Empirical acceptance rate ``accepted / drafted`` (vLLM's ``spec_decode`` counters).

    Returns 0.0 when nothing was drafted. Note this is NOT the i.i.d. ``alpha`` of the model: a
    rejection also discards every later draft of the step, so under the model the rate is
    ``(E - 1) / k < alpha``. To fit ``alpha``, use :func:`alpha_from_mean_accepted_length` with
    ``mean_len = 1 + accepted / num_drafts`` (``num_drafts`` = verifications).
    """
    if num_draft_tokens < 0 or num_accepted_tokens < 0:
        raise ValueError("counts must be >= 0")
    if num_accepted_tokens > num_draft_tokens:
        raise ValueError(
            f"accepted ({num_accepted_tokens}) cannot exceed drafted ({num_draft_tokens})"
        )
    if num_draft_tokens == 0:
        return 0.0
    return num_accepted_tokens / num_draft_tokens


def alpha_from_mean_accepted_length(mean_len: float, k: int, tol: float = 1e-12) -> float:
    """The ``alpha`` whose :func:`expected_tokens_per_step` equals ``mean_len`` (bisection).

    ``mean_len`` counts the bonus/correction token, so it lies in ``[1, k + 1]``; the ends map to
    0 and 1. ``E(alpha)`` is strictly increasing on ``[0, 1]`` for ``k >= 1``, so bisection is exact
    to ``tol``. With ``k == 0`` every ``alpha`` gives 1 and 0.0 is returned.
    """
    _check_alpha_k(0.0, k)
    k = int(k)
    if not 1.0 - 1e-12 <= mean_len <= k + 1 + 1e-12:
        raise ValueError(f"mean_len must be in [1, {k + 1}] for k={k}, got {mean_len!r}")
    if k == 0 or mean_len <= 1.0:
        return 0.0
    if mean_len >= k + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if expected_tokens_per_step(mid, k) < mean_len:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# -- the cost curve ----------------------------------------------------------------------------------
# A forward's cost is neither constant nor proportional in the batch size; minedraft.bench.simulation
# runs the scheduler's policy step by step on this curve.


@dataclass(frozen=True)
class CostModel:
    """Seconds per step part as a function of the rows ``b`` in the batch: ``fixed + per_row * b``
    (linear through two measured points, e.g. SD's full batch and PSD's half batch; on CPU half a
    batch costs about 0.7 of a full one, neither 0.5 nor 1). ``overhead`` is added to every step.
    ``verify_per_token``: the verify's cost per row-token, so that one curve covers every k:
    ``verify(b, t) = verify_fixed + verify_per_row * b + verify_per_token * b * t`` for ``t`` tokens
    per row (``k + 1``; a mean for ragged rows); an AR decode is ``verify(b, 1)``. With 0 (a curve
    measured at one k, as ``through`` makes) the verify costs the same whatever ``t``. The online
    fit of all terms is :mod:`minedraft.spec.cost_model`.
    ``prefill_per_request``: admitting requests stalls both workers for this much per request (the
    scheduler prefills on both, then steps on; measured as a round's time outside its steps)."""

    draft_fixed: float
    draft_per_row: float
    verify_fixed: float
    verify_per_row: float
    overhead: float = 0.0
    prefill_per_request: float = 0.0
    verify_per_token: float = 0.0

    @classmethod
    def through(cls, b_full: int, t_draft_full: float, t_verify_full: float, b_half: int, t_draft_half: float,
                t_verify_half: float, overhead: float = 0.0) -> "CostModel":
        """The line through (b_half, t_half) and (b_full, t_full) for the draft forward and the verify;
        a constant cost when both points have the same batch size. ``t_draft_*`` is ONE draft forward."""
        _check_times(t_draft_full=t_draft_full, t_verify_full=t_verify_full, t_draft_half=t_draft_half,
                     t_verify_half=t_verify_half, overhead=overhead)

        def line(t_full, t_half):
            if b_full == b_half:
                return t_full, 0.0
            slope = max(0.0, (t_full - t_half) / (b_full - b_half))
            return max(0.0, t_full - slope * b_full), slope

        (df, dr), (vf, vr) = line(t_draft_full, t_draft_half), line(t_verify_full, t_verify_half)
        return cls(df, dr, vf, vr, overhead)

    def draft(self, rows: int) -> float:
        return self.draft_fixed + self.draft_per_row * rows if rows else 0.0

    def verify(self, rows: int, tokens_per_row: float = 1.0) -> float:
        """One target forward over ``rows`` rows of ``tokens_per_row`` tokens each (decode: 1)."""
        if not rows:
            return 0.0
        return self.verify_fixed + self.verify_per_row * rows + self.verify_per_token * rows * tokens_per_row

    def decode(self, rows: int) -> float:
        """One AR step of the target: a verify of one token per row."""
        return self.verify(rows, 1.0)

    def prefill(self, requests: int) -> float:
        return self.prefill_per_request * requests
