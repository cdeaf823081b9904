"""The scheduler owns a request's committed tokens: the draft pool re-homes a request from the
scheduler's record (DraftWorker.attach) and keeps only which node holds it and how many tokens that
node lacks. And closing an Engine closes its scheduler and draft."""

import grpc
import pytest

from gateway.draft_pool import DraftPool
from minedraft import Engine, SamplingParams
from minedraft.spec.workers import DraftWorker, NewRequest, Proposal, completed

PARAMS = SamplingParams()


class Gone(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


class FakeNode(DraftWorker):
    """A draft node that records the tokens it was given (prefill and updates)."""

    def __init__(self, room: int = 8):
        self.room, self.rows, self.fail, self.added = room, {}, False, []

    def add(self, requests, features=()):  # features: what a pool hands an EAGLE node (none here)
        n = min(len(requests), self.room - len(self.rows))
        for r in requests[:n]:
            self.rows[r.request_id] = list(r.prompt_ids)
        self.added.extend(requests[:n])
        return n

    def _propose(self, ids, k, updates):
        if self.fail:
            raise Gone()
        for rid in ids:
            self.rows[rid].extend(updates.get(rid, []))
        return Proposal(list(ids), k)

    def propose(self, ids, k, updates):
        return self._propose(ids, k, updates)

    def start_propose(self, ids, k, updates, pool=None, features=()):
        return completed(self._propose, ids, k, updates)

    def release(self, ids):
        for rid in ids:
            self.rows.pop(rid, None)


def pool_of(**nodes) -> tuple[DraftPool, dict]:
    pool = DraftPool(["127.0.0.1:1"], None, None, None)
    pool.nodes = dict(nodes)
    record = {}  # what the scheduler keeps: prompt + committed
    pool.attach(lambda rid: NewRequest(rid, list(record[rid]), PARAMS, 7, resume=True))
    return pool, record


def test_a_failed_nodes_request_is_rehomed_from_the_schedulers_record():
    a, b = FakeNode(), FakeNode()
    pool, record = pool_of(a=a, b=b)
    record["r"] = [1, 2, 3]
    assert pool.add([NewRequest("r", [1, 2, 3], PARAMS, 7)]) == 1
    home = "a" if "r" in a.rows else "b"
    first, other = (a, b) if home == "a" else (b, a)
    record["r"] += [4]
    pool.propose(["r"], 2, {"r": [4]})
    assert first.rows["r"] == [1, 2, 3, 4]
    first.fail = True
    record["r"] += [5]
    pool.propose(["r"], 2, {"r": [5]})
    assert list(pool.nodes) == ["b" if home == "a" else "a"]
    assert other.rows["r"] == [1, 2, 3, 4, 5] and other.added[-1].resume


def test_tokens_a_node_missed_at_no_room_reach_it_with_the_next_proposal():
    from minedraft.spec.workers import NoRoom

    a, b = FakeNode(room=1), FakeNode(room=1)
    pool, record = pool_of(a=a, b=b)
    record.update(r1=[1, 2], r2=[5, 6])
    assert pool.add([NewRequest("r1", [1, 2], PARAMS, 7), NewRequest("r2", [5, 6], PARAMS, 7)]) == 2
    assert set(a.rows) | set(b.rows) == {"r1", "r2"}
    holder_of_r2 = "a" if "r2" in a.rows else "b"
    holder = pool.nodes["b" if holder_of_r2 == "a" else "a"]
    pool._drop(holder_of_r2, RuntimeError("gone"))  # r2 has no node now; r1's node is full
    record["r1"] += [3]
    record["r2"] += [7]
    with pytest.raises(NoRoom):
        pool.propose(["r1", "r2"], 2, {"r1": [3], "r2": [7]})
    assert holder.rows["r1"] == [1, 2]  # r1's update was handed over but not sent
    pool.release(["r2"])  # the scheduler preempts r2
    pool.propose(["r1"], 2, {"r1": []})
    assert holder.rows["r1"] == [1, 2, 3]


def test_engine_close_closes_the_scheduler_and_its_draft(llama_pair):
    target, draft, _ = llama_pair
    closed = []
    with Engine(target, draft, mode="sd", num_speculative_tokens=2) as engine:
        engine.scheduler.draft.close = lambda: closed.append(True)
        assert len(engine.generate([[1, 5, 9]], SamplingParams(max_tokens=4, ignore_eos=True))[0].token_ids) == 4
    assert closed == [True]
    with pytest.raises(RuntimeError):  # its worker threads are shut down
        engine.scheduler._pool.submit(print)


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_worker_rows_keep_only_what_their_kv_cache_needs(llama_pair, mode):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    reqs = [engine.make_request([1, 5 + i, 9, 13, 4, 8, 2], params) for i in range(3)]
    for r in reqs:
        engine.scheduler.add(r)
    books = [engine.scheduler.target.book] + ([engine.scheduler.draft.book] if mode != "ar" else [])
    longest = 0
    while engine.has_unfinished():
        engine.step()
        for book in books:
            for state in book.states.values():
                longest = max(longest, len(state.tokens.tail))
    assert all(len(r.output_ids) == 40 for r in reqs)
    assert longest <= 3 + 2  # k drafts and the pending token, not the whole sequence
