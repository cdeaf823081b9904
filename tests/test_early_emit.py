"""The gateway's engine loop streams what is final before a step's dispatch (Scheduler._emit_early): a
new request's first token and a collected verify's tokens go out while the step's proposal is still
being drafted, not after it. The draft's proposals are held at a gate, so the order is certain."""

import queue
import threading

from gateway.engine_loop import EngineLoop
from minedraft import Engine, SamplingParams

PROMPT = "The quick brown fox"
MAX_TOKENS = 12


class GatedPropose:
    """Each proposal waits for a permit (release(n)); open() lets every later one through."""

    def __init__(self, propose):
        self.propose, self.permits, self.opened = propose, threading.Semaphore(0), threading.Event()

    def __call__(self, *args, **kwargs):
        while not self.opened.is_set():
            if self.permits.acquire(timeout=0.05):
                break
        return self.propose(*args, **kwargs)

    def open(self):
        self.opened.set()


def test_tokens_stream_before_the_steps_proposal_is_drafted():
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    with Engine(mode="ar") as reference:
        expected = reference.generate([PROMPT], params)[0]
    engine = Engine(mode="sd", num_speculative_tokens=3)
    scheduler = engine.scheduler
    gate = GatedPropose(scheduler.draft.propose)
    scheduler.draft.propose = gate
    loop = EngineLoop(scheduler)
    try:
        events = loop.submit(engine.make_request(PROMPT, params, "early"))
        # Step 1: admission's first token, while the step's first proposal waits at the gate.
        first = events.get(timeout=20)
        assert len(first.new_tokens) == 1 and not first.finished
        # Step 2 collects the verify of that proposal: its tokens come out while the next one waits.
        gate.permits.release(1)
        second = events.get(timeout=20)
        assert len(second.new_tokens) >= 1
        gate.open()
        got = first.new_tokens + second.new_tokens
        while True:
            try:
                event = events.get(timeout=30)
            except queue.Empty:
                raise AssertionError("the stream stalled") from None
            got += event.new_tokens
            if event.finished:
                break
        assert got == expected.token_ids  # lossless: target-only greedy decoding, token for token
    finally:
        gate.open()
        loop.stop()
        engine.close()
