"""A worker that loses its KV cache (restart) is refilled from each request's prompt and committed
tokens, and the output is exactly what an uninterrupted run gives: greedy and seeded sampling."""

import pytest

from minedraft import Engine, SamplingParams
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalDraftWorker, LocalTargetWorker


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_fresh_workers_resume_every_request_identically(llama_pair, mode, temperature):
    target, draft, _ = llama_pair
    params = SamplingParams(temperature=temperature, top_p=0.95, max_tokens=24, seed=5, ignore_eos=True)
    prompts = [[1, 5 + i, 9, 13, 4 + i] for i in range(5)]
    expected = [r.token_ids for r in Engine(target, draft, mode=mode, num_speculative_tokens=3)
                .generate(prompts, params)]

    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    reqs = [engine.make_request(p, params) for p in prompts]
    for r in reqs:
        engine.scheduler.add(r)
    for _ in range(4):  # part-way through
        engine.step()
    assert any(r.output_ids for r in reqs) and not all(r.finished for r in reqs)
    sched = engine.scheduler  # both workers "restart": new processes, empty caches
    sched.target = LocalTargetWorker(ModelRunner(target, max_num_seqs=8, lookahead=5))
    if sched.draft is not None:
        sched.draft = LocalDraftWorker(ModelRunner(draft, max_num_seqs=8, lookahead=5))
    assert sched.requeue_all_for_resume() > 0
    while engine.has_unfinished():
        engine.step()
    assert [r.output_ids for r in reqs] == expected
