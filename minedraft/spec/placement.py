"""How many torch intra-op threads the in-process Engine's model threads use on a CPU (issue 24).

In process, the target runs on the caller's thread and the draft, in PSD, on the scheduler's worker
thread at the same time (SD drafts on the caller's thread; admission prefills the draft on the worker
thread beside the target's prefill). torch gives every thread that runs an operator its own OpenMP
intra-op team, `torch.get_num_threads()` threads (by default one per core), and libgomp's team threads
busy-wait at the end of each parallel region before they sleep. Two models' teams on the same cores
then spend their time waiting on each other's spinning threads (and on any other process's load).
Measured with `scripts/inproc_placement.py --rounds 4` (2 shared cores, bundled pair, 16 prompts x 64
tokens, k = 4; fresh process per run, rounds interleaved, best of 4, tok/s):
    AR   torch's threads 2771, one thread 2183
    SD   torch's threads 1225, one per model thread 1846
    PSD  torch's threads 1096, one per model thread 1777
and in an earlier, busier 3-round run (same script; PSD at torch's threads 997 there):
    PSD  draft thread at one beside a two-thread target: 88-106 (the target's team spins on its core)
    PSD  both threads at one, pinned to cores 0 and 1 (as `minedraft up` pins processes): 1024,
         against 1228 unpinned
So nothing is pinned here: on a shared machine the OS places the two threads better.

So, on CPU, with a draft in use, the Engine runs each model thread with `cpu_threads_per_model`
(EngineConfig; default 1) intra-op threads: the worker threads from their start, the caller's thread
when it steps the Engine (torch.set_num_threads on that thread: it also becomes torch's default for
threads started later in the process). Target-only steps (mode ar, or auto's k = 0 steps) run one
model alone, which torch's own setting does best (AR above: 1.27x faster at two threads than at
one): the caller's thread gets back what it had for them. None leaves torch's setting alone.
"""

from __future__ import annotations

import contextlib

import torch

# A long prefill runs the target nearly alone (the draft's share of the same tokens is small and soon
# done), so the in-process target prefills at torch's own threads, not cpu_threads_per_model: measured
# with a Qwen3-0.6B-shaped target, a 2,000-token prompt + 7 short ones in psd took 2.4x transformers'
# time for the long prompt alone at one thread, 1.1x at torch's two (README, "Memory and long prompts").
# Counted over the whole prefill call (issue 21's profile): the seven 40-token prompts admitted together
# (280 tokens) and a staged prompt's last chunk (208) ran at one thread under the old per-row count of
# 256, 5.1 s and 5.0 s of the 0.6B-shaped case's single-thread time, where two threads halve it.
PREFILL_THREADS_MIN_TOKENS = 128  # uncached tokens of one prefill call, all its rows together


def threads_per_model(config) -> int | None:
    """What the Engine applies while it speculates (None: nothing). config: an EngineConfig."""
    n = config.cpu_threads_per_model
    on_cpu = str(config.device).startswith("cpu") and str(config.draft_device or config.device).startswith("cpu")
    if n is None or not on_cpu or config.mode == "ar" or config.draft is None:  # ar: no draft is loaded
        return None
    return n


def use_threads(n: int | None) -> None:
    """Give the calling thread n intra-op threads (a no-op when it has them or n is None)."""
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def threads_for(n: int | None):
    """The calling thread at n intra-op threads inside the block, as before after it (None: unchanged)."""
    before = torch.get_num_threads()
    use_threads(n)
    try:
        yield
    finally:
        use_threads(before)


def worker_thread_setup(n: int):
    """An initializer for the scheduler's worker threads (Scheduler.set_worker_thread_setup)."""
    return lambda: use_threads(n)


class CallerThreads:
    """The caller's thread: n intra-op threads while a draft may run beside the target (`shared`),
    its own setting for a step that runs the target alone (`solo`: ar, and auto's k = 0 steps, which
    must be as fast as ar). The scheduler calls them (Scheduler.threads); a switch happens only when
    the kind of step changes."""

    def __init__(self, n: int | None):
        self.n, self.own = n, torch.get_num_threads()

    def shared(self) -> None:
        if self.n is not None:
            use_threads(self.n)

    def solo(self) -> None:
        if self.n is not None:
            use_threads(self.own)


def parameter_share(draft_model, target_model) -> float:
    """The draft's parameters over the target's: a forward's compute per token, roughly (the output
    layer included, which dominates a small draft of a large vocabulary)."""
    draft, target = (sum(p.numel() for p in m.parameters()) for m in (draft_model, target_model))
    return draft / max(1, target)


# In process on a CPU, a PSD step overlaps a draft step with a verify, each at one thread. When the draft
# step is short against the verify (a Qwen3-0.6B-shaped target beside a 2-layer draft: 0.02 s against
# 0.5 s at one thread, issue 21's long-prompt case), the overlap saves at most the draft's time while
# the verify runs at half the threads: the step is faster drafted first, then verified at the caller's
# own threads. The bundled pair's draft is far above this share and keeps the overlap.
SERIAL_DRAFT_SHARE = 0.15


class DraftShare:
    """PSD's draft compute over its verify compute, smoothed over steps that ran both. prior: the guess
    before any step measured it (the models' parameter counts, `parameter_share`): without one the first
    steps overlap, and a verify at one thread took 0.24-0.38 s where two take 0.18 (issue 21's case)."""

    def __init__(self, prior: float | None = None):
        self.value: float | None = prior

    def observe(self, draft_s: float, verify_s: float) -> None:
        if draft_s > 0 and verify_s > 0:
            ratio = draft_s / verify_s
            self.value = ratio if self.value is None else 0.8 * self.value + 0.2 * ratio

    @property
    def small(self) -> bool:
        """Whether a draft step is cheap enough to run before the verify rather than beside it."""
        return self.value is not None and self.value < SERIAL_DRAFT_SHARE
