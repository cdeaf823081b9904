"""`minedraft bench --long-prompt`: the running streams' inter-token latency while a long prompt arrives.

`--long-streams` streams (default 16) run; once each has its first tokens, one prompt of
`--long-prompt-tokens` tokens (default: what the bundled pair's 512-token context leaves) arrives.
Measured twice in one run, on a fresh cluster each: whole-prompt admission (`--prefill-chunk-tokens 0`)
and staged prefill (`--long-chunk`, default 64 tokens a step). Reported: the running streams' ITL p50
over the run, their ITL p99 and largest gap while the long prompt is being prefilled (from its arrival
to its first token), their tokens per second then and just before, and the long prompt's TTFT.

Two ways to count a gap, both reported. Per token (`itl_*`): a chunk of n tokens after a gap of g
counts n gaps of g/n. Per chunk (`chunk_gap_*`, vLLM's benchmark convention): one gap per streamed
chunk. With speculation the two differ: a row whose drafts are all rejected gets one token after a
whole verify period (two steps in psd), so its per-token p99 is several times the median even when no
prompt arrives at all; `*_outside` (the same streams while no long prompt is being prefilled) shows
that floor, and the ratio to it what the prefill itself adds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from minedraft.bench.chat import percentile, start, text_ids

SETTLE_S = 0.3  # the long prompt comes this long after every stream has its first tokens


def add_arguments(p) -> None:
    g = p.add_argument_group("long-prompt scenario (--long-prompt: runs it instead of the default bench)")
    g.add_argument("--long-prompt", action="store_true", help="ITL of running streams while a long prompt arrives")
    g.add_argument("--long-streams", type=int, default=16, help="streams running when it arrives")
    g.add_argument("--long-prompt-tokens", type=int, default=470, help="tokens of the long prompt")
    g.add_argument("--long-chunk", type=int, default=64, help="--prefill-chunk-tokens of the staged run")
    g.add_argument("--long-stream-tokens", type=int, default=96, help="tokens each running stream generates")
    g.add_argument("--long-rounds", type=int, default=3, help="rounds of each, interleaved (medians reported)")


async def scenario(address: str, args, shorts: list[list[int]], long_prompt: list[int]) -> dict:
    from minedraft.client import AsyncMineDraftClient

    client = AsyncMineDraftClient(address)
    gaps: list[tuple[float, float]] = []  # (when, gap per token) of the running streams
    chunk_gaps: list[tuple[float, float]] = []  # (when, gap) per streamed chunk
    started = [asyncio.Event() for _ in shorts]
    window = {}
    try:
        await client.channel.channel_ready()

        async def stream(i):
            last = None
            async for chunk in client.generate(shorts[i], max_tokens=args.long_stream_tokens, temperature=0.0,
                                               ignore_eos=True, request_id=f"run-{i}"):
                if not chunk.token_ids:
                    continue
                now = time.perf_counter()
                if last is not None:
                    gaps.extend([(now, (now - last) / len(chunk.token_ids))] * len(chunk.token_ids))
                    chunk_gaps.append((now, now - last))
                last = now
                if not started[i].is_set():
                    started[i].set()

        async def long_one():
            for e in started:
                await e.wait()
            await asyncio.sleep(SETTLE_S)  # the streams are in their stride
            window["start"] = time.perf_counter()
            async for chunk in client.generate(long_prompt, max_tokens=8, temperature=0.0, ignore_eos=True,
                                               request_id="long"):
                if chunk.token_ids and "end" not in window:
                    window["end"] = time.perf_counter()

        await asyncio.gather(*(stream(i) for i in range(len(shorts))), long_one())
    finally:
        await client.close()
    def split(series):  # all gaps, those while the long prompt is prefilled, and the others
        inside = [window["start"] <= t <= window["end"] + 1e-3 for t, _ in series]
        return ([g for _, g in series], [g for (_, g), i in zip(series, inside) if i],
                [g for (_, g), i in zip(series, inside) if not i])

    all_gaps, during, outside = split(gaps)
    all_chunks, chunks_during, chunks_outside = split(chunk_gaps)
    span = window["end"] - window["start"]
    before = [t for t, _ in gaps if window["start"] - SETTLE_S <= t < window["start"]]
    return dict(itl_p50_s=percentile(all_gaps, 50), itl_p99_during_s=percentile(during, 99),
                itl_max_during_s=max(during, default=0.0), long_ttft_s=span,
                itl_p99_outside_s=percentile(outside, 99), chunk_gap_p50_s=percentile(all_chunks, 50),
                chunk_gap_p99_during_s=percentile(chunks_during, 99),
                chunk_gap_p99_outside_s=percentile(chunks_outside, 99),
                # the running streams' tokens per second while it is prefilled, and just before it came
                stream_tok_s_during=len(during) / span if span else 0.0,
                stream_tok_s_before=len(before) / SETTLE_S)


def run(args) -> dict:
    import statistics

    from minedraft.runner import hf_adapter

    tok = hf_adapter.load_tokenizer(args.target)
    shorts = [text_ids(tok, 12, offset=3 + i) for i in range(args.long_streams)]
    long_prompt = text_ids(tok, args.long_prompt_tokens, offset=60)
    out = {"settings": dict(streams=args.long_streams, long_prompt_tokens=len(long_prompt), mode=args.chat_mode,
                            stream_tokens=args.long_stream_tokens, rounds=args.long_rounds), "runs": {}}
    names = {0: "whole", args.long_chunk: f"staged-{args.long_chunk}"}
    with tempfile.TemporaryDirectory() as log_dir:
        clusters = {}
        try:
            for chunk in names:  # both up at once: their rounds interleave, so load changes hit both alike
                clusters[chunk] = start(args, True, f"{log_dir}", prefill_chunk_tokens=chunk, log_name=str(chunk))
            rounds = {chunk: [] for chunk in names}
            for r in range(args.long_rounds):
                for chunk, cluster in clusters.items():
                    tagged = [[r + 5] + s[1:] for s in shorts]  # new prompts each round: nothing cached before
                    rounds[chunk].append(asyncio.run(scenario(cluster.addresses["gateway"], args, tagged,
                                                              [r + 5] + long_prompt[1:])))
        finally:
            for cluster in clusters.values():
                cluster.stop()
    for chunk, results in rounds.items():
        med = {key: statistics.median(x[key] for x in results) for key in results[0]}
        for name, num, den in (("itl_p99_during_over_p50", "itl_p99_during_s", "itl_p50_s"),
                               ("itl_p99_outside_over_p50", "itl_p99_outside_s", "itl_p50_s"),
                               ("chunk_gap_p99_during_over_p50", "chunk_gap_p99_during_s", "chunk_gap_p50_s")):
            med[name] = med[num] / med[den] if med[den] else None
        med["rounds"] = results
        out["runs"][names[chunk]] = med
    return out


def format_long(report: dict) -> str:
    s = report["settings"]
    lines = [f"long prompt ({s['long_prompt_tokens']} tokens) arriving beside {s['streams']} running streams "
             f"({s['mode']})",
             "per token: ITL p50 over the run, p99 and max while it is prefilled, p99 while none is (the floor);"
             " per chunk: gap p50 and p99 while it is prefilled",
             f"{'prefill':<12}{'ITL p50':>10}{'p99 during':>12}{'max during':>12}{'p99/p50':>9}{'floor/p50':>10}"
             f"{'chunk p50':>11}{'p99 during':>12}{'p99/p50':>9}{'long TTFT':>11}{'tok/s before':>14}"
             f"{'tok/s during':>14}"]
    for name, r in report["runs"].items():
        lines.append(f"{name:<12}{r['itl_p50_s'] * 1e3:>8.1f}ms{r['itl_p99_during_s'] * 1e3:>10.1f}ms"
                     f"{r['itl_max_during_s'] * 1e3:>10.1f}ms{r['itl_p99_during_over_p50']:>9.1f}"
                     f"{r['itl_p99_outside_over_p50']:>10.1f}{r['chunk_gap_p50_s'] * 1e3:>9.1f}ms"
                     f"{r['chunk_gap_p99_during_s'] * 1e3:>10.1f}ms{r['chunk_gap_p99_during_over_p50']:>9.1f}"
                     f"{r['long_ttft_s'] * 1e3:>9.1f}ms{r['stream_tok_s_before']:>14.0f}"
                     f"{r['stream_tok_s_during']:>14.0f}")
    return "\n".join(lines)
