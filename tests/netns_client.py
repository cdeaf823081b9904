"""Run inside a network namespace by tests/test_netns_drafts.py (`ip netns exec NS python
tests/netns_client.py SPEC`): wait for the services there (and stop there when SPEC has no prompts), then
send the prompts to the gateway at once and print one JSON line with the outputs, the channel's transport
and the step statistics (channel bytes, wall time)."""

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
    outputs = [None] * len(spec["prompts"])

    def one(i):
        with MineDraftClient(gateway) as client:
            outputs[i] = [t for chunk in client.generate(spec["prompts"][i], max_tokens=spec["max_tokens"],
                                                         ignore_eos=True) for t in chunk.token_ids]

    with MineDraftClient(gateway) as client:
        info = client.model_info()
        for _ in range(spec.get("warmup", 1)):  # first calls pay one-off costs in every process
            one(0)
        client.stats(reset=True)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(outputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        stats = client.stats()
    print(json.dumps({"outputs": outputs, "transport": info.transport, "drafts": sorted(info.draft_endpoints),
                      "steps": stats.steps.num_steps, "wall_s": stats.steps.wall_s,
                      "channel_bytes": stats.steps.channel_bytes, "control_plane_s": stats.steps.control_plane_s,
                      "drafted": stats.spec_decode_num_draft_tokens,
                      "accepted": stats.spec_decode_num_accepted_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
