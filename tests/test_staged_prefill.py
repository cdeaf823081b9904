"""Staged prefill (minedraft/spec/staged_prefill.py): a long prompt is prefilled one chunk per step
while the running streams keep getting tokens; the outputs are those of whole-prompt admission; an
abort while staged ends the request and leaves no block held."""

import pytest

from minedraft import Engine, SamplingParams
from minedraft.config import PREFILL_CHUNK_TOKENS

LONG = [1] + [(7 * j) % 300 + 5 for j in range(300)]
SHORTS = [[1] + [(11 * i + j) % 200 + 3 for j in range(8)] for i in range(4)]


def run(mode: str, chunk: int, params: SamplingParams):
    engine = Engine(mode=mode, num_speculative_tokens=3, prefill_chunk_tokens=chunk)
    ids = [engine.add_request(s, params) for s in SHORTS]
    for _ in range(3):
        engine.step()
    long_id = engine.add_request(LONG, params)
    out, steps_before_first, tokens_meanwhile = {}, 0, 0
    while engine.has_unfinished():
        done = engine.step()
        long_started = any(r.request_id == long_id and r.output_ids for r in done)
        if long_id not in out and not long_started and steps_before_first >= 0:
            steps_before_first += 1
            tokens_meanwhile += sum(1 for r in done if r.request_id in ids)
        if long_started:
            steps_before_first = -abs(steps_before_first)
        for r in done:
            if r.finished:
                out[r.request_id] = r.output_ids
    return [out[i] for i in ids + [long_id]], abs(steps_before_first), tokens_meanwhile, engine


@pytest.mark.parametrize("mode", ["ar", "psd"])
def test_long_prompt_is_staged_beside_running_streams_with_the_same_output(mode):
    for params in (SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
                   SamplingParams(temperature=0.8, seed=3, max_tokens=16, ignore_eos=True)):
        whole, _, _, _ = run(mode, 0, params)
        staged, steps, meanwhile, engine = run(mode, 64, params)
        assert staged == whole
        assert steps >= 300 // 64 - 1  # one chunk per step, not the whole prompt at once
        assert meanwhile >= steps - 1  # and the running streams got tokens in those steps
        b = engine.target_runner.blocks
        assert b.prefix_cache_hits >= 256 and b.num_free == b.num_usable


def test_abort_while_staged_ends_it_and_frees_everything():
    engine = Engine(mode="psd", num_speculative_tokens=3, prefill_chunk_tokens=64)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    short = engine.add_request(SHORTS[0], params)
    engine.step()
    long_id = engine.add_request(LONG, params)
    engine.step()
    assert engine.scheduler.is_staged(long_id)
    engine.scheduler.abort(long_id)
    finished = {}
    while engine.has_unfinished():
        for r in engine.step():
            if r.finished:
                finished[r.request_id] = r
    assert finished[long_id].finish_reason == "abort" and finished[short].finish_reason == "length"
    for runner in (engine.target_runner, engine.draft_runner):
        assert runner.blocks.num_free == runner.blocks.num_usable


def test_up_turns_staging_off_without_prefix_caching():
    from minedraft.config import UpConfig
    from minedraft.config.flags import from_flat

    assert from_flat(UpConfig, {}).gateway_config().speculation.prefill_chunk_tokens == PREFILL_CHUNK_TOKENS
    off = from_flat(UpConfig, {"enable_prefix_caching": False}).gateway_config()
    assert off.speculation.prefill_chunk_tokens == 0


@pytest.mark.parametrize("mode", ["ar", "psd"])
def test_no_step_prefills_more_than_one_chunk(mode):
    """The last chunk is the request's own admission, in a step of its own (not a stand-in chunk and
    the rest together, which made the final step twice as long)."""
    chunk = 64
    engine = Engine(mode=mode, num_speculative_tokens=3, prefill_chunk_tokens=chunk)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    runner = engine.target_runner
    forward, step_tokens = runner.forward, [0]

    def counting_forward(seqs, tokens, *args, **kwargs):
        step_tokens[0] += sum(len(t) for t in tokens if len(t) > 8)  # prefill rows (verify rows hold k+1)
        step_tokens[0] += sum(len(t) for _, t in kwargs.get("riders", ()))  # a staged chunk
        return forward(seqs, tokens, *args, **kwargs)

    runner.forward = counting_forward
    engine.add_request(SHORTS[0], params)
    engine.step()
    engine.add_request(LONG, params)
    per_step = []
    while engine.has_unfinished():
        step_tokens[0] = 0
        engine.step()
        per_step.append(step_tokens[0])
    assert sum(per_step) >= len(LONG) - chunk  # the long prompt went through here, mostly staged
    assert max(per_step) <= chunk + runner.blocks.block_size  # a chunk (and its copied partial block)


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_a_staged_chunk_rides_on_the_running_rows_forward(mode):
    """In process, a stand-in's chunk is prefilled by the step's own verify or decode: the running
    rows and the chunk share one pass over the weights (no step forwards the target twice while
    staging); the draft's copy rides on its proposal; the output is that of whole-prompt admission."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    engine = Engine(mode=mode, num_speculative_tokens=2, prefill_chunk_tokens=64)
    runner = engine.target_runner
    forward, calls = runner.forward, []

    def recording_forward(seqs, tokens, *args, **kwargs):
        calls.append((len(seqs), sum(len(t) for _, t in kwargs.get("riders", ()))))
        return forward(seqs, tokens, *args, **kwargs)

    runner.forward = recording_forward
    draft_calls = []  # the draft's forwards: (rows, most tokens of a row, rider tokens)
    if engine.draft_runner is not None:
        draft_forward = engine.draft_runner.forward

        def recording_draft_forward(seqs, tokens, *args, **kwargs):
            longest = max((len(t) for t in tokens), default=0) if not hasattr(tokens, "shape") else 1
            draft_calls.append((len(seqs), longest, sum(len(t) for _, t in kwargs.get("riders", ()))))
            return draft_forward(seqs, tokens, *args, **kwargs)

        engine.draft_runner.forward = recording_draft_forward
    ids = [engine.add_request(s, params) for s in SHORTS]
    engine.step()
    long_id = engine.add_request(LONG, params)
    out, staging_steps = {}, 0
    while engine.has_unfinished():
        calls.clear()
        draft_calls.clear()
        staged = engine.scheduler.is_staged(long_id)
        for r in engine.step():
            if r.finished:
                out[r.request_id] = r.output_ids
        if staged and engine.scheduler.is_staged(long_id):
            staging_steps += 1
            assert len(calls) == 1, calls  # one target forward: the chunk and the running rows
            rows, rider_tokens = calls[0]
            assert rows >= 1 and rider_tokens >= 64 - runner.blocks.block_size, calls
            if mode != "ar":  # the draft's chunk rides on its proposal: no forward of its own
                assert all(rows >= 1 and longest < 32 for rows, longest, _ in draft_calls), draft_calls
                assert sum(r for _, _, r in draft_calls) >= 64 - runner.blocks.block_size, draft_calls
    assert staging_steps >= 300 // 64 - 2
    whole, _, _, _ = run_whole(mode, params)
    assert [out[i] for i in ids + [long_id]] == whole


def run_whole(mode, params):
    engine = Engine(mode=mode, num_speculative_tokens=2, prefill_chunk_tokens=0)
    ids = [engine.add_request(s, params) for s in SHORTS]
    engine.step()
    long_id = engine.add_request(LONG, params)
    out = {}
    while engine.has_unfinished():
        for r in engine.step():
            if r.finished:
                out[r.request_id] = r.output_ids
    return [out[i] for i in ids + [long_id]], None, None, engine


def _riding_passes(runner):
    """Record, per target forward that carries a rider, how many passes it made and their tokens."""
    forward, run_chunk, record = runner.forward, runner._run_chunk, []

    def recording_forward(seqs, tokens, *args, **kwargs):
        if kwargs.get("riders"):
            record.append(dict(rows=len(seqs), passes=[]))
        try:
            return forward(seqs, tokens, *args, **kwargs)
        finally:
            if kwargs.get("riders"):
                record[-1]["done"] = True

    def recording_run_chunk(chunk, *args, **kwargs):
        if record and "done" not in record[-1]:
            record[-1]["passes"].append(sum(sl.q_len for _, sl, _ in chunk))
        return run_chunk(chunk, *args, **kwargs)

    runner.forward, runner._run_chunk = recording_forward, recording_run_chunk
    return record


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_a_chunk_and_the_steps_rows_fit_one_forward_pass(mode):
    """The chunk is cut to what the pass budget (max_num_batched_tokens) leaves beside the step's own
    rows, and ends on a block boundary: a riding forward is one pass over the weights, never a full
    pass plus one of a few spilled tokens (a whole pass of a big target for them)."""
    budget, params = 64, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outputs = {}
    for chunk in (0, 64):
        engine = Engine(mode=mode, num_speculative_tokens=3, prefill_chunk_tokens=chunk, max_num_batched_tokens=budget)
        riding = _riding_passes(engine.target_runner)
        ids = [engine.add_request(s, params) for s in SHORTS]
        engine.step()
        ids.append(engine.add_request(LONG, params))
        done = {}
        while engine.has_unfinished():
            done.update({r.request_id: r.output_ids for r in engine.step() if r.finished})
        outputs[chunk] = [done[i] for i in ids]
    with_rows = [f for f in riding if f["rows"]]
    assert len(with_rows) >= 2  # chunks rode on the rows' forwards
    assert all(len(f["passes"]) == 1 and f["passes"][0] <= budget for f in with_rows), with_rows
    assert outputs[64] == outputs[0]  # the output of whole-prompt admission


def test_psd_auto_does_not_start_its_pipeline_while_a_chunk_rides():
    """A pipeline's first step verifies nothing: with a chunk riding, the target would run the chunk alone
    while every row waits. Merged, psd auto stays merged while a chunk rides (each riding forward decodes
    all the rows), and those steps are no decisions of the controller (they measure the chunk)."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    engine = Engine(mode="psd", prefill_chunk_tokens=64)
    riding = _riding_passes(engine.target_runner)
    controller = engine.scheduler.controller
    merge, calls = controller.merge, []

    def noting_merge(*args, riding=False, **kwargs):
        before = controller.decisions
        merged = merge(*args, riding=riding, **kwargs)
        calls.append((riding, merged, controller.decisions - before))
        return merged

    controller.merge = noting_merge
    for s in SHORTS:
        engine.add_request(s, params)
    engine.add_request(LONG, params)
    while engine.has_unfinished():
        engine.step()
    assert len(riding) >= 3
    assert all(f["rows"] == len(SHORTS) for f in riding[1:]), riding  # every row, in every riding step
    assert calls[0][1] and calls[0][2] == 1, calls  # the first step decides (merged: it measures a decode)
    while_riding = [c for c in calls[1:] if c[0]]  # (its decode carries a chunk too: _stage_again)
    assert while_riding and all(merged and not counted for _, merged, counted in while_riding), calls


def test_a_step_a_chunk_rode_on_is_not_measured_as_its_k():
    """Its verify and wall times are mostly the chunk's: fed to the cost model they would price k."""
    from minedraft.spec.controller import Learned
    from minedraft.spec.metrics import StepRecord

    for ride in (False, True):
        learned = Learned(4)
        learned.on_record(StepRecord("sd", 0.5, draft_s=0.01, verify_s=0.45, num_verified=4, k=2, draft_rows=4,
                                     verify_tokens=12, ride=ride))
        fits = [len(f) for f in (*learned.costs.verify_fits.values(), *learned.costs.draft_fits.values())]
        assert (sum(fits) == 0) == ride
        assert bool(learned.costs.overhead) != ride


def test_an_sd_chunk_leaves_room_for_the_k_the_controller_prefers():
    """sd decides k after staging: the chunk leaves k + 1 tokens a row for the k auto prefers (1 at k = 0,
    a target-only decode), and for its bound before it decided; a fixed k leaves k + 1."""
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    engine = Engine(mode="sd", max_num_batched_tokens=64, max_k=4)
    for s in SHORTS:
        engine.add_request(s, params)
    engine.step()
    sched, controller = engine.scheduler, engine.scheduler.controller
    rows = len(sched.running)
    for best, want in ((None, 64 - rows * 5), (0, 64 - rows), (2, 64 - rows * 3)):
        controller.best = best
        assert sched._chunk_room(64) == want, best
    fixed = Engine(mode="sd", num_speculative_tokens=3, max_num_batched_tokens=64)
    for s in SHORTS:
        fixed.add_request(s, params)
    fixed.step()
    assert fixed.scheduler._chunk_room(64) == 64 - len(fixed.scheduler.running) * 4


@pytest.mark.parametrize("mode", ["ar", "psd"])
def test_a_step_whose_admission_carried_the_chunk_carries_the_next_on_its_own_forward(mode):
    """Short prompts and a long one arrive together: the shorts' admission prefill carries the first
    chunk, and the step's own decode of those rows the second (it went alone before: a whole pass of
    the target for a few tokens, and the long prompt started a step later). Output as whole admission."""
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = {}
    for chunk in (0, 64):
        engine = Engine(mode=mode, prefill_chunk_tokens=chunk)
        riding = _riding_passes(engine.target_runner)
        ids = [engine.add_request(s, params) for s in SHORTS + [LONG]]
        engine.step()
        if chunk:
            assert [f["rows"] for f in riding] == [len(SHORTS), len(SHORTS)], riding  # the add, then the decode
        done = {}
        while engine.has_unfinished():
            done.update({r.request_id: r.output_ids for r in engine.step() if r.finished})
        outputs[chunk] = [done[i] for i in ids]
    assert outputs[64] == outputs[0]
