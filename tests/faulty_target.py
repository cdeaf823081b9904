"""A real target service with per-row faults injected in its worker, as a worker that finds one bad row
raises: `python tests/faulty_target.py [target_service flags]`.

- a request whose id starts with "poison-add" makes Add raise a RequestFault naming it;
- a request whose id starts with "poison-verify" makes its 4th Verify raise one (mid-stream, while
  the other rows of its batch are verified in the same call).
"""

import sys

from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.workers import RequestFault
from target_service.server import main

_add, _verify = LocalTargetWorker.add, LocalTargetWorker.verify
_verifies: dict[str, int] = {}


def add(self, requests):
    bad = [r.request_id for r in requests if r.request_id.startswith("poison-add")]
    if bad:
        raise RequestFault(bad, f"request {bad[0]!r}: injected fault in add")
    return _add(self, requests)


def verify(self, proposal):
    bad = []
    for rid in proposal.request_ids:
        if rid.startswith("poison-verify"):
            _verifies[rid] = _verifies.get(rid, 0) + 1
            if _verifies[rid] == 4:
                bad.append(rid)
    if bad:
        raise RequestFault(bad, f"request {bad[0]!r}: injected fault in verify")
    return _verify(self, proposal)


LocalTargetWorker.add, LocalTargetWorker.verify = add, verify

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
