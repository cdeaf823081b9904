"""The in-process Engine's CPU thread placement (minedraft/spec/placement.py): on CPU with a draft,
every thread that runs a model uses `cpu_threads_per_model` torch intra-op threads (default 1);
None leaves torch alone; the output never changes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minedraft import Engine, SamplingParams
from minedraft.config import EngineConfig
from minedraft.spec.placement import DraftShare, threads_per_model


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_plan_follows_the_config():
    base = EngineConfig(target="t", draft="d", mode="psd")
    assert threads_per_model(base) == 1
    assert threads_per_model(dataclasses.replace(base, mode="sd")) == 1
    assert threads_per_model(dataclasses.replace(base, mode="ar")) is None  # one model: torch's own
    assert threads_per_model(dataclasses.replace(base, cpu_threads_per_model=None)) is None
    assert threads_per_model(dataclasses.replace(base, cpu_threads_per_model=2)) == 2
    assert threads_per_model(dataclasses.replace(base, device="cuda:0")) is None
    with pytest.raises(ValueError, match="cpu_threads_per_model"):
        EngineConfig(target="t", draft="d", cpu_threads_per_model=0)


@pytest.mark.parametrize("mode", ["psd", "sd"])
def test_model_threads_use_one_intra_op_thread_and_output_is_unchanged(llama_pair, mode, keep_torch_threads):
    target, draft, _ = llama_pair
    prompts = [[1, 5 + i, 9, 13, 4 + i] for i in range(6)]
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    torch.set_num_threads(2)
    untouched = Engine(target, draft, mode=mode, num_speculative_tokens=3, cpu_threads_per_model=None)
    expected = [r.token_ids for r in untouched.generate(prompts, params)]
    assert torch.get_num_threads() == 2 and untouched.threads_per_model is None
    assert untouched.scheduler._pool.submit(torch.get_num_threads).result() == 2
    untouched.close()

    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    seen, drafting = [], [mode == "sd"]  # sd: every verify follows a draft call
    sched = engine.scheduler
    verify, start_propose = sched.target.verify, sched._start_propose

    def verify_noting_threads(proposal):  # the target runs on the caller's thread
        seen.append((torch.get_num_threads(), drafting[0]))
        drafting[0] = mode == "sd"
        return verify(proposal)

    def start_propose_noting(*args):  # psd: the step's draft call, sent just before its verify
        drafting[0] = True
        return start_propose(*args)

    sched.target.verify, sched._start_propose = verify_noting_threads, start_propose_noting
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected
    # one thread beside a draft call; a psd step without one (the pipeline draining) runs the target
    # alone, at the caller's own setting
    assert all(threads == (1 if beside_draft else 2) for threads, beside_draft in seen)
    assert any(beside_draft for _, beside_draft in seen)
    assert engine.scheduler._pool.submit(torch.get_num_threads).result() == 1  # where PSD drafts
    engine.scheduler.reconfigure("ar", None)  # target-only steps: the caller's own setting again
    engine.generate(prompts[:2], params)
    assert torch.get_num_threads() == 2
    engine.close()


def test_target_only_steps_of_auto_run_at_the_callers_own_setting(llama_pair, keep_torch_threads):
    # auto's k = 0 steps decode the target alone, as ar does: they must not be held to one thread.
    target, draft, _ = llama_pair
    prompts = [[1, 5 + i, 9, 13, 4 + i] for i in range(4)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    torch.set_num_threads(2)
    engine = Engine(target, draft, mode="sd")  # k = auto
    seen = []
    decode = engine.scheduler.target.decode
    engine.scheduler.target.decode = lambda ids: seen.append(torch.get_num_threads()) or decode(ids)
    engine.scheduler.controller.k_for = lambda ids, requests, max_k=None: 0
    expected = Engine(target, mode="ar").generate(prompts, params)
    assert [r.token_ids for r in engine.generate(prompts, params)] == [r.token_ids for r in expected]
    assert seen and set(seen) == {2}
    engine.close()


@pytest.mark.parametrize("mode", ["psd", "sd"])
def test_a_cheap_draft_step_goes_first_and_the_verify_gets_every_thread(llama_pair, mode, keep_torch_threads):
    """When the draft step is cheap beside the verify (placement.DraftShare), overlapping them only
    holds the verify to one thread: the draft step finishes first and the verify runs at the caller's
    own setting. The output is the same."""
    target, draft, _ = llama_pair
    prompts = [[1, 5 + i, 9, 13, 4 + i] for i in range(6)]
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    torch.set_num_threads(2)
    expected = [r.token_ids for r in Engine(target, mode="ar").generate(prompts, params)]
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    sched = engine.scheduler
    sched.draft_share = DraftShare(0.01)
    sched.draft_share.observe = lambda draft_s, verify_s: None  # keep it cheap for this test
    assert sched.draft_share.small
    seen, verify, propose = [], sched.target.verify, sched.draft.propose
    proposing = [False]

    def propose_marking(*args):
        proposing[0] = True
        try:
            return propose(*args)
        finally:
            proposing[0] = False

    def verify_noting(proposal):
        seen.append((torch.get_num_threads(), proposing[0]))
        return verify(proposal)

    sched.target.verify, sched.draft.propose = verify_noting, propose_marking
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected
    assert seen and all(threads == 2 and not busy for threads, busy in seen), seen
    engine.close()


def test_the_draft_share_starts_from_the_models_parameter_counts(llama_pair):
    """Before any step measured it, whether the draft goes first follows the models' sizes: a 2-layer
    draft beside a 28-layer target must not hold the first verifies to one thread."""
    from minedraft.spec.placement import SERIAL_DRAFT_SHARE, parameter_share

    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode="psd", num_speculative_tokens=3)
    share = parameter_share(engine.draft_runner.model, engine.target_runner.model)
    assert 0 < share <= 1 and engine.scheduler.draft_share.value == share
    assert parameter_share(torch.nn.Linear(10, 10), torch.nn.Linear(100, 100)) == pytest.approx(110 / 10100)
    assert DraftShare(SERIAL_DRAFT_SHARE / 2).small and not DraftShare(2 * SERIAL_DRAFT_SHARE).small
    assert not DraftShare().small  # nothing known: the overlap, as before
    assert Engine(target, mode="ar").scheduler.draft_share.value is None
    engine.close()
