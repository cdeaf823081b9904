"""`minedraft bench --chat`: chat traffic through the services with prefix caching on and off, in one run.

Two workloads, each run against a fresh cluster with caching on and then with it off:
* `shared-system`: every request is one system prompt shared by all (`--chat-system-tokens`, 3/4 of
  the bundled pair's 512-token context by default) plus a short distinct user turn;
* `multi-turn`: conversations of `--chat-turns` turns, each turn's prompt the whole conversation so
  far (system prompt, earlier turns and replies) plus a new user turn; conversations run side by side.
Requests arrive at `--rate` per second (TTFT then measures prefill, not a queue). Reported per
workload and setting: TTFT p50/p99, ITL p50/p99 (a chunk of n tokens after t seconds counts as n gaps
of t/n, as the gateway's histogram does), throughput, and the target's prefix-cache hits.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

WORKLOADS = ("shared-system", "multi-turn")


def add_arguments(p) -> None:
    g = p.add_argument_group("chat scenario (--chat: runs it instead of the default bench)")
    g.add_argument("--chat", action="store_true", help="run the chat scenario: prefix caching on vs off")
    g.add_argument("--chat-requests", type=int, default=24, help="requests of the shared-system workload")
    g.add_argument("--chat-system-tokens", type=int, default=384, help="tokens of the shared system prompt")
    g.add_argument("--chat-user-tokens", type=int, default=12, help="tokens of each user turn")
    g.add_argument("--chat-turns", type=int, default=3, help="turns per conversation of the multi-turn workload")
    g.add_argument("--chat-conversations", type=int, default=6, help="conversations of the multi-turn workload")
    g.add_argument("--chat-max-tokens", type=int, default=24, help="tokens each reply generates")
    g.add_argument("--chat-rate", type=float, default=4.0, help="requests (or conversations) started per second")
    g.add_argument("--chat-mode", default="psd", choices=("ar", "sd", "psd"))


def text_ids(tokenizer, n: int, offset: int = 0) -> list[int]:
    """n token ids of the held-out prompts' text (real text, so the bundled pair drafts well)."""
    from minedraft.assets import load_heldout_prompts

    ids = []
    prompts = load_heldout_prompts()
    i = offset
    while len(ids) < n:
        ids += tokenizer.encode(prompts[i % len(prompts)], add_special_tokens=False)
        i += 1
    return ids[:n]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


class Recorder:
    def __init__(self):
        self.ttft, self.itl, self.tokens = [], [], 0

    async def send(self, client, prompt: list[int], max_tokens: int, rid: str) -> list[int]:
        sent = time.perf_counter()
        last, out = None, []
        async for chunk in client.generate(prompt, request_id=rid, max_tokens=max_tokens, temperature=0.0,
                                           ignore_eos=True):
            if not chunk.token_ids:
                continue
            now = time.perf_counter()
            if last is None:
                self.ttft.append(now - sent)
            else:
                self.itl += [(now - last) / len(chunk.token_ids)] * len(chunk.token_ids)
            last = now
            out += list(chunk.token_ids)
        self.tokens += len(out)
        return out

    def summary(self, wall: float) -> dict:
        return dict(ttft_p50_s=statistics.median(self.ttft) if self.ttft else 0.0,
                    ttft_p99_s=percentile(self.ttft, 99), itl_p50_s=percentile(self.itl, 50),
                    itl_p99_s=percentile(self.itl, 99), throughput_tok_s=self.tokens / wall if wall else 0.0,
                    num_requests=len(self.ttft), wall_s=wall)


async def _timed(address: str, run) -> dict:
    """One workload on its own client: run(client, rec) sends its requests; the Recorder's summary."""
    from minedraft.client import AsyncMineDraftClient

    client = AsyncMineDraftClient(address)
    rec = Recorder()
    try:
        await client.channel.channel_ready()
        start = time.perf_counter()
        await run(client, rec)
        return rec.summary(time.perf_counter() - start)
    finally:
        await client.close()


async def shared_system(address: str, args, system: list[int], users: list[list[int]], tag: str) -> dict:
    async def run(client, rec):
        async def one(i):
            await asyncio.sleep(i / args.chat_rate)
            await rec.send(client, system + users[i], args.chat_max_tokens, f"chat-{tag}-{i}")

        await asyncio.gather(*(one(i) for i in range(len(users))))

    return await _timed(address, run)


async def multi_turn(address: str, args, system: list[int], users: list[list[list[int]]], tag: str) -> dict:
    async def run(client, rec):
        async def conversation(c):
            await asyncio.sleep(c / args.chat_rate)
            history = list(system)
            for t, turn in enumerate(users[c]):
                history += turn
                history += await rec.send(client, history, args.chat_max_tokens, f"chat-{tag}-{c}-{t}")

        await asyncio.gather(*(conversation(c) for c in range(len(users))))

    return await _timed(address, run)


def start(args, caching: bool, log_dir: str, log_name: str = "", **flags):
    import types

    from minedraft.bench.cli import free_port, service_max_num_seqs
    from minedraft.launcher import LocalCluster, service_commands

    ns = types.SimpleNamespace(target=args.target, draft=args.draft, device=args.device, draft_device=None,
                               bind_workers="127.0.0.1", target_port=free_port(), draft_port=free_port(),
                               port=free_port(), bind="127.0.0.1", mode=args.chat_mode, k=args.k,
                               transport=args.transport, pin=args.pin, max_num_seqs=service_max_num_seqs(args),
                               http_port=0, enable_prefix_caching=caching, **flags)
    log_dir = os.path.join(log_dir, log_name) if log_name else log_dir
    os.makedirs(log_dir, exist_ok=True)
    cluster = LocalCluster(service_commands(ns), log_dir=log_dir)
    cluster.start()
    cluster.addresses = {"target": f"127.0.0.1:{ns.target_port}", "draft": f"127.0.0.1:{ns.draft_port}",
                         "gateway": f"127.0.0.1:{ns.port}"}
    cluster.wait_healthy(cluster.addresses, timeout=args.startup_timeout, progress=lambda m: None)
    return cluster


def run(args) -> dict:
    from minedraft.client import MineDraftClient
    from minedraft.runner import hf_adapter

    tok = hf_adapter.load_tokenizer(args.target)
    system = text_ids(tok, args.chat_system_tokens)
    users = [text_ids(tok, args.chat_user_tokens, offset=7 + i) for i in range(args.chat_requests)]
    turns = [[text_ids(tok, args.chat_user_tokens, offset=40 + c * args.chat_turns + t)
              for t in range(args.chat_turns)] for c in range(args.chat_conversations)]
    out = {"workloads": {}, "settings": dict(system_tokens=len(system), user_tokens=args.chat_user_tokens,
                                             requests=args.chat_requests, turns=args.chat_turns,
                                             conversations=args.chat_conversations, mode=args.chat_mode,
                                             max_tokens=args.chat_max_tokens, rate=args.chat_rate)}
    for caching in (True, False):
        setting = "caching_on" if caching else "caching_off"
        with tempfile.TemporaryDirectory() as log_dir:
            cluster = start(args, caching, log_dir)
            try:
                address = cluster.addresses["gateway"]
                with MineDraftClient(address) as client:  # warm-up: one short request, on a different prompt
                    client.generate_ids(users[0][:4], max_tokens=4, ignore_eos=True)
                    before = client.stats().prefix_cache["target"]
                for name in WORKLOADS:
                    if name == "shared-system":
                        result = asyncio.run(shared_system(address, args, system, users, setting))
                    else:
                        result = asyncio.run(multi_turn(address, args, system, turns, setting))
                    with MineDraftClient(address) as client:
                        now = client.stats().prefix_cache["target"]
                    result["target_prefix_cache_queries"] = now.prefix_cache_queries - before.prefix_cache_queries
                    result["target_prefix_cache_hits"] = now.prefix_cache_hits - before.prefix_cache_hits
                    before = now
                    out["workloads"].setdefault(name, {})[setting] = result
            finally:
                cluster.stop()
    for r in out["workloads"].values():
        on, off = r["caching_on"], r["caching_off"]
        r["ttft_p50_on_over_off"] = on["ttft_p50_s"] / off["ttft_p50_s"] if off["ttft_p50_s"] else None
        r["throughput_on_over_off"] = (on["throughput_tok_s"] / off["throughput_tok_s"]
                                       if off["throughput_tok_s"] else None)
    return out


def format_chat(report: dict) -> str:
    lines = [f"chat scenario ({report['settings']['mode']}, system prompt {report['settings']['system_tokens']} "
             "tokens): prefix caching on vs off",
             f"{'workload':<15}{'caching':<9}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>10}{'ITL p99':>10}"
             f"{'tok/s':>8}{'hit tokens':>12}"]
    for name, r in report["workloads"].items():
        for setting in ("caching_on", "caching_off"):
            x = r[setting]
            lines.append(f"{name:<15}{setting[8:]:<9}{x['ttft_p50_s'] * 1e3:>8.1f}ms{x['ttft_p99_s'] * 1e3:>8.1f}ms"
                         f"{x['itl_p50_s'] * 1e3:>8.1f}ms{x['itl_p99_s'] * 1e3:>8.1f}ms{x['throughput_tok_s']:>8.1f}"
                         f"{x['target_prefix_cache_hits']:>12}")
        lines.append(f"{'':<15}TTFT p50 on/off {r['ttft_p50_on_over_off']:.2f}, throughput on/off "
                     f"{r['throughput_on_over_off']:.2f}")
    return "\n".join(lines)
