"""`minedraft bench`: how one round of one mode runs and what it records.

Three kinds of rounds, all measured the same way from the caller's side (latency = request sent ->
last token; TTFT = request sent -> first chunk carrying tokens; the round's wall time = first
request sent -> last request done):

* service rounds (`ar`, `sd`, `psd`): one asyncio thread streams every in-flight request from the
  gateway of the running three-service cluster; the mode is switched with `Configure` before the
  round and the gateway's counters and step breakdown are read (and zeroed) with `GetStats` after it;
* in-process rounds (`sd-inproc`, `psd-inproc`, `sd-b1`): the same scheduler over in-process
  workers, driven step by step from the calling thread (no gRPC);
* Hugging Face rounds (`hf-assisted`, `hf-target`): `transformers` `generate`, one request at a
  time (its assisted generation needs batch size 1), see :mod:`minedraft.bench.hf_peer`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import resource
import time

from minedraft.spec.metrics import BREAKDOWN_FIELDS, sum_steps
from minedraft.spec.sampling import SamplingParams

SERVICE_MODES = ("ar", "sd", "psd")
# The paper's protocol through the same services: bench mode -> (scheduler mode, running requests in
# units of N). SD runs one batch of up to N, PSD two batches of up to N each; 4N requests are queued.
PAPER_MODES = {"sd-paper": ("sd", 1), "psd-paper": ("psd", 2)}
PAPER_QUEUE_FACTOR = 4
INPROC_MODES = {"sd-inproc": "sd", "psd-inproc": "psd", "sd-b1": "sd"}  # bench mode -> scheduler mode
HF_MODES = ("hf-assisted", "hf-target")
ALL_MODES = SERVICE_MODES + tuple(PAPER_MODES) + tuple(INPROC_MODES) + HF_MODES
BATCH1_MODES = ("sd-b1",) + HF_MODES  # serial, over the first --hf-requests prompts


class BenchError(RuntimeError):
    """The benchmark found something inconsistent; it stops rather than report wrong numbers."""


@dataclasses.dataclass
class RequestRecord:
    index: int  # position in the workload
    latency_s: float  # sent -> last token
    ttft_s: float | None  # sent -> first token
    num_tokens: int  # token ids actually returned to the caller
    num_counted: int  # tokens the server says it generated for this request
    num_drafted: int = 0
    num_accepted: int = 0
    finish_reason: str = ""
    target_forwards: int = 0  # hf modes: target forward passes (verifications in assisted mode)


@dataclasses.dataclass
class RoundResult:
    mode: str
    round: int
    wall_s: float
    requests: list[RequestRecord]
    counters: dict | None = None  # spec_decode_* counters (None where the mode has none)
    steps: dict | None = None  # step-time breakdown sums (see minedraft.spec.metrics.sum_steps)
    step_tokens: int | None = None  # tokens committed by decode steps (in-process only)
    cpu_s: dict | None = None  # service rounds: CPU seconds each process used in the round (see process_cpu_s)

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.requests)


@dataclasses.dataclass
class Workload:
    prompts: list[list[int]]  # token ids, one per request
    arrivals: list[float]  # seconds after the round's start (all 0.0 when everything arrives at once)
    concurrency: int
    max_tokens: int
    temperature: float
    seed: int

    def params(self, i: int) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, ignore_eos=True,
                              seed=self.seed + i)


def process_cpu_s(pids: dict[str, int]) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by each process, and by this one as "client" (the bench's
    request threads). None where /proc is not there. On 2 cores, the sum per step says how much of the
    machine the step takes: the control plane waits for a core when the workers' compute fills both."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, pid in pids.items():
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    except (OSError, ValueError, AttributeError):
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = usage.ru_utime + usage.ru_stime
    return out


def breakdown_from_proto(steps) -> dict:
    return {name: getattr(steps, name) for name in BREAKDOWN_FIELDS}


def counters_from_metrics(m) -> dict:
    return dict(num_drafts=int(m.spec_decode_num_drafts), num_draft_tokens=int(m.spec_decode_num_draft_tokens),
                num_accepted_tokens=int(m.spec_decode_num_accepted_tokens),
                num_accepted_tokens_per_pos=[int(x) for x in m.spec_decode_num_accepted_tokens_per_pos])


def check_round(result: RoundResult, workload: Workload, num_requests: int, allow_no_drafts: bool = False) -> None:
    """Tokens counted must equal tokens returned, and every request must get exactly max_tokens
    (EOS is ignored in every mode); speculative counters must add up. Raises BenchError.
    `allow_no_drafts`: k = auto may decode a whole round target-only (k = 0 every step), and a
    model-free proposer may find nothing to copy."""
    where = f"{result.mode} round {result.round}"
    if len(result.requests) != num_requests:
        raise BenchError(f"{where}: {len(result.requests)} of {num_requests} requests completed")
    for r in result.requests:
        if r.num_tokens != r.num_counted:
            raise BenchError(f"{where}: request {r.index}: {r.num_tokens} tokens returned but the server counted "
                             f"{r.num_counted}")
        if r.num_tokens != workload.max_tokens:
            raise BenchError(f"{where}: request {r.index}: {r.num_tokens} tokens returned, expected exactly "
                             f"{workload.max_tokens} (EOS is ignored); finish reason {r.finish_reason!r}")
    expected = num_requests * workload.max_tokens
    if result.num_tokens != expected:
        raise BenchError(f"{where}: {result.num_tokens} tokens returned in all, expected {expected}")
    if result.step_tokens is not None and result.step_tokens + num_requests != expected:
        raise BenchError(f"{where}: decode steps committed {result.step_tokens} tokens (+{num_requests} from "
                         f"prefill) but {expected} were returned")
    c = result.counters
    if c is not None and result.mode != "ar" and not result.mode.startswith("hf-"):
        drafted = sum(r.num_drafted for r in result.requests)
        accepted = sum(r.num_accepted for r in result.requests)
        if drafted != c["num_draft_tokens"] or accepted != c["num_accepted_tokens"]:
            raise BenchError(f"{where}: requests report {accepted}/{drafted} accepted/drafted tokens but the "
                             f"counters say {c['num_accepted_tokens']}/{c['num_draft_tokens']}")
        if c["num_drafts"] == 0 and not allow_no_drafts:
            raise BenchError(f"{where}: no draft was verified")


# -- service rounds ---------------------------------------------------------------------------------
def run_service_round(client, mode: str, k: int, workload: Workload, round_index: int,
                      indices: list[int] | None = None, max_num_seqs: int = 0,
                      pids: dict[str, int] | None = None) -> RoundResult:
    """One round through the gateway: Configure(mode, k, max_num_seqs), zero the counters, send the
    workload (one asyncio thread streams every request), read the counters and step breakdown. `mode` may be
    a paper mode (sd-paper, psd-paper): the gateway then runs its scheduler mode."""
    indices = list(range(len(workload.prompts))) if indices is None else indices
    sched_mode = PAPER_MODES[mode][0] if mode in PAPER_MODES else mode
    info = client.configure(mode=sched_mode, num_speculative_tokens=k, max_num_seqs=max_num_seqs)
    if info.mode != sched_mode or (max_num_seqs and info.max_num_seqs != max_num_seqs):
        raise BenchError(f"gateway: asked for mode {sched_mode!r} with max_num_seqs {max_num_seqs}, it runs "
                         f"{info.mode!r} with {info.max_num_seqs}")
    client.stats(reset=True)
    cpu_before = process_cpu_s(pids) if pids else None

    wall, outcomes = asyncio.run(_send_round(client.address, mode, workload, round_index, indices))
    cpu_after = process_cpu_s(pids) if cpu_before else None
    stats = client.stats(reset=True)
    counters = None
    if sched_mode != "ar":
        counters = dict(num_drafts=stats.spec_decode_num_drafts, num_draft_tokens=stats.spec_decode_num_draft_tokens,
                        num_accepted_tokens=stats.spec_decode_num_accepted_tokens,
                        num_accepted_tokens_per_pos=list(stats.spec_decode_num_accepted_tokens_per_pos))
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after} if cpu_after else None
    return RoundResult(mode, round_index, wall, outcomes, counters,
                       breakdown_from_proto(stats.steps), cpu_s=cpu)


async def _send_round(address: str, mode: str, workload: Workload, round_index: int,
                      indices: list[int]) -> tuple[float, list[RequestRecord]]:
    """Send the round's requests (at their arrival times, at most `concurrency` in flight) and stream
    every response, all on one asyncio thread: a thread per stream would cost this machine's cores
    the measured services need (grpc's sync streams wake a thread per chunk)."""
    from minedraft.client import AsyncMineDraftClient

    client = AsyncMineDraftClient(address)
    slots = asyncio.Semaphore(workload.concurrency)

    async def one(i: int, due: float) -> tuple[RequestRecord, float]:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        async with slots:
            sent = time.perf_counter()
            ttft, ids, last = None, 0, None
            async for chunk in client.generate(workload.prompts[i], request_id=f"bench-{mode}-{round_index}-{i}",
                                               **dataclasses.asdict(workload.params(i))):
                if chunk.token_ids and ttft is None:
                    ttft = time.perf_counter() - sent
                ids += len(chunk.token_ids)
                last = chunk
            done = time.perf_counter()
        return RequestRecord(i, done - sent, ttft, ids, last.num_generated_tokens if last else 0,
                             last.num_drafted if last else 0, last.num_accepted if last else 0,
                             last.finish_reason if last else ""), done

    try:
        await client.channel.channel_ready()  # connected before the clock starts, as a warm client is
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i, start + workload.arrivals[i]) for i in indices))
    finally:
        await client.close()
    return max(done for _, done in outcomes) - start, [rec for rec, _ in outcomes]


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


# -- in-process rounds ------------------------------------------------------------------------------
def run_inproc_round(engine, mode: str, k: int, workload: Workload, round_index: int,
                     indices: list[int] | None = None, concurrency: int | None = None,
                     at_once: bool = False) -> RoundResult:
    """One round on the in-process engine, stepped from this thread. `at_once` ignores the arrival
    times (batch-1 rounds send the next request when the previous one is done)."""
    indices = list(range(len(workload.prompts))) if indices is None else indices
    concurrency = concurrency or workload.concurrency
    engine.scheduler.reconfigure(INPROC_MODES.get(mode, mode), k)
    pending = collections.deque(indices)
    sent: dict[str, float] = {}
    first: dict[str, float] = {}
    records: list[RequestRecord] = []
    done: set[str] = set()
    index_of: dict[str, int] = {}
    start = time.perf_counter()
    end = start
    while pending or engine.has_unfinished():
        now = time.perf_counter()
        while pending and len(sent) - len(records) < concurrency and \
                (at_once or start + workload.arrivals[pending[0]] <= now):
            i = pending.popleft()
            rid = engine.add_request(workload.prompts[i], workload.params(i),
                                     request_id=f"bench-{mode}-{round_index}-{i}")
            sent[rid], index_of[rid] = time.perf_counter(), i
        if not engine.has_unfinished():
            _sleep_until(start + workload.arrivals[pending[0]])
            continue
        touched = engine.step()
        t = time.perf_counter()
        for req in touched:
            rid = req.request_id
            if req.output_ids and rid not in first:
                first[rid] = t
            if req.finished and rid in sent and rid not in done:
                done.add(rid)
                n = len(req.output_ids)
                records.append(RequestRecord(index_of[rid], t - sent[rid],
                                             first[rid] - sent[rid] if rid in first else None, n, n,
                                             req.num_drafted, req.num_accepted, req.finish_reason or ""))
                end = t
    m = engine.metrics
    breakdown = sum_steps(m.steps)
    step_tokens = sum(s.num_tokens for s in m.steps)
    counters = counters_from_metrics(m) if INPROC_MODES.get(mode, mode) != "ar" else None
    records.sort(key=lambda r: r.index)
    return RoundResult(mode, round_index, end - start, records, counters, breakdown, step_tokens)

