"""Run inside a network namespace by tests/test_netns_drafts.py (`ip netns exec NS python
tests/netns_client.py SPEC`): wait for the services there (and stop there when SPEC has no prompts), then
send the prompts to the gateway at once and print one JSON line with the outputs, the channel's transport
and, for a greedy and a seeded sampled run, the outputs and step statistics (channel bytes, wall time)."""

from __future__ import annotations

import json
import sys
import threading
import time

from minedraft.client import MineDraftClient
from minedraft.rpc.health import check_health


def main() -> int:
    spec = json.loads(sys.argv[1])
    gateway, deadline = spec["gateway"], time.monotonic() + spec.get("timeout_s", 120)
    pending = list(spec["wait"])
    while pending:
        pending = [a for a in pending if not check_health(a, timeout=1.0)]
        if pending and time.monotonic() > deadline:
            print(json.dumps({"error": f"not SERVING: {pending}"}))
            return 1
        time.sleep(0.2)
    if not spec.get("prompts"):
        print(json.dumps({"ready": True}))
        return 0
    with MineDraftClient(gateway) as client:
        info = client.model_info()
        run(gateway, spec["prompts"][:1], spec["max_tokens"], {})  # first calls pay one-off costs everywhere
        result = {"transport": info.transport, "drafts": sorted(info.draft_endpoints)}
        # greedy, then sampled (seeded: verified by the coupling, no q crosses the channel)
        for name, params in (("greedy", {}), ("sampled", {"temperature": 1.0})):
            client.stats(reset=True)
            outputs = run(gateway, spec["prompts"], spec["max_tokens"], params)
            stats = client.stats()
            result[name] = {"outputs": outputs, "steps": stats.steps.num_steps, "wall_s": stats.steps.wall_s,
                            "channel_bytes": stats.steps.channel_bytes, "control_plane_s": stats.steps.control_plane_s,
                            "drafted": stats.spec_decode_num_draft_tokens,
                            "accepted": stats.spec_decode_num_accepted_tokens}
    print(json.dumps(result))
    return 0


def run(gateway: str, prompts: list, max_tokens: int, params: dict) -> list:
    """All prompts at once, one client thread each; request i of a sampled run has seed i."""
    outputs = [None] * len(prompts)

    def one(i):
        seed = {"seed": i} if params else {}
        with MineDraftClient(gateway) as client:
            outputs[i] = [t for chunk in client.generate(prompts[i], max_tokens=max_tokens, ignore_eos=True,
                                                         **params, **seed) for t in chunk.token_ids]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return outputs


if __name__ == "__main__":
    sys.exit(main())
