"""A request that reaches the gateway while a step waits for its collect is admitted by that step
(Scheduler.before_admission, set by the engine loop to take its arrivals), not by the next one: over
the services that saved up to a whole step of its time to first token."""

import queue

from gateway.engine_loop import EngineLoop
from minedraft import Engine, SamplingParams

PROMPTS = ("The quick brown fox", "Once upon a time")
MAX_TOKENS = 10


def drain(events) -> list[int]:
    got = []
    while True:
        try:
            event = events.get(timeout=30)
        except queue.Empty:
            raise AssertionError("the stream stalled") from None
        assert event.error is None
        got += event.new_tokens
        if event.finished:
            return got


def test_a_request_arriving_during_a_steps_collect_joins_its_admission():
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    with Engine(mode="ar") as reference:
        expected = [out.token_ids for out in reference.generate(list(PROMPTS), params)]
    engine = Engine(mode="sd", num_speculative_tokens=3)
    scheduler = engine.scheduler
    late, admitted_by_its_step = {}, []
    collect, step = scheduler._collect, scheduler.step

    def collect_then_arrival(touched):
        collect(touched)
        if not late and scheduler.running:  # a step of the first request: the second one arrives now
            late["events"] = loop.submit(engine.make_request(PROMPTS[1], params, "late"))

    def step_and_look():
        touched = step()
        if late and not admitted_by_its_step:
            admitted_by_its_step.append("late" in scheduler.running)
        return touched

    scheduler._collect, scheduler.step = collect_then_arrival, step_and_look
    loop = EngineLoop(scheduler)
    try:
        first = drain(loop.submit(engine.make_request(PROMPTS[0], params, "first")))
        assert late, "no step ran with the first request in flight"
        assert admitted_by_its_step == [True]  # the loop's next drain would have been a step later
        assert [first, drain(late["events"])] == expected  # lossless: target-only greedy decoding
    finally:
        loop.stop()
        engine.close()
