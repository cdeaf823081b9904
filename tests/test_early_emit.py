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


def pipeline_steps(verifies_on_caller: bool) -> list[list[str]]:
    """psd over four prompts: for each step of the pipeline (not those psd runs as sd, one request per
    batch) that verified, the order of its verify call and its early hand-over of tokens ("emit")."""
    engine = Engine(mode="psd", num_speculative_tokens=3)
    scheduler = engine.scheduler
    steps: list[list[str]] = []
    scheduler.target.verifies_on_caller = verifies_on_caller  # False: as a gRPC target, whose call only goes out
    start_verify, step, dispatch_sd = scheduler.target.start_verify, scheduler.step, scheduler._dispatch_sd
    scheduler.target.start_verify = lambda proposal: steps[-1].append("verify") or start_verify(proposal)
    scheduler.on_tokens = lambda requests: steps[-1].append("emit")
    scheduler.step = lambda: steps.append([]) or step()
    scheduler._dispatch_sd = lambda *args: steps[-1].append("sd") or dispatch_sd(*args)
    try:
        engine.generate([PROMPT, "def fibonacci(n):", "Once upon a time", "import numpy as np"],
                        SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    finally:
        engine.close()
    return [s for s in steps if "verify" in s and "sd" not in s]


def test_psd_hands_tokens_over_after_sending_its_calls_when_they_only_go_out():
    """A psd step whose verify is a call in flight sends it first, and its collected tokens go to the
    clients after the step (the front end's work then overlaps the workers'); a step that verifies on
    the calling thread hands them over first, as an sd step does before its proposal."""
    sent = pipeline_steps(verifies_on_caller=False)
    local = pipeline_steps(verifies_on_caller=True)
    assert len(sent) >= 4 and len(local) >= 4
    assert all(s == ["verify"] for s in sent)
    emitting = [s for s in local if "emit" in s]  # a step with nothing collected has nothing to hand over
    assert len(emitting) >= 4 and all(s == ["emit", "verify"] for s in emitting)
