"""A prefill riding on another forward (ModelRunner.forward(riders=), LocalTargetWorker.ride): the
rows it rides with get the logits they would get alone, the rider's KV is what its own prefill
writes, and a rider that does not fit is refused when it is offered, never in the step after."""

import sys

import torch

from minedraft import SamplingParams
from minedraft.assets import default_target_path
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.workers import NewRequest

PROMPT = [1] + [(7 * j) % 300 + 5 for j in range(70)]
OTHER = [1] + [(11 * j) % 200 + 3 for j in range(9)]


def runner(**kw):
    return ModelRunner(default_target_path(), **{"num_kv_blocks": 64, "max_model_len": 256, **kw})


def test_a_rider_changes_nothing_for_the_rows_it_rides_with_and_writes_its_own_kv():
    alone, riding = runner(enable_prefix_caching=False), runner(enable_prefix_caching=False)
    for r in (alone, riding):
        r.other = r.allocate(OTHER)
        r.forward([r.other], [OTHER])
    a = alone.allocate(PROMPT)
    alone.forward([a], [PROMPT[:-1]])
    step_alone = alone.forward([alone.other], [[5, 6, 7]], all_positions=True)
    b = riding.allocate(PROMPT)
    step_riding = riding.forward([riding.other], [[5, 6, 7]], all_positions=True, riders=[(b, PROMPT[:-1])])
    assert step_riding.shape == step_alone.shape
    torch.testing.assert_close(step_riding, step_alone, rtol=1e-4, atol=1e-4)
    assert riding.length(b) == alone.length(a) == len(PROMPT) - 1
    # the rider's cache is its own prefill's: the next token's logits agree
    torch.testing.assert_close(riding.forward([b], [PROMPT[-1:]]), alone.forward([a], [PROMPT[-1:]]),
                               rtol=1e-4, atol=1e-4)
    assert riding.forward([], [], riders=[(riding.allocate(), [1, 2, 3])]) is None  # riders alone


def test_worker_carries_the_rider_in_its_next_decode_and_refuses_one_that_does_not_fit():
    worker = LocalTargetWorker(runner(num_kv_blocks=12, block_size=16, max_model_len=160))
    params = SamplingParams(temperature=0.0, max_tokens=8)
    worker.add([NewRequest("running", OTHER, params, seed=0)])
    calls = []
    forward = worker.runner.forward
    worker.runner.forward = lambda *a, **kw: calls.append(len(kw.get("riders", ()))) or forward(*a, **kw)
    assert worker.ride([NewRequest("chunk", PROMPT, params, seed=0)]) == 1 and worker.riding
    worker.decode(["running"])
    assert calls == [1] and not worker.riding
    assert worker.runner.length(worker.book.states["chunk"].row) == len(PROMPT)
    # 12 blocks of 16: the running row and this rider hold 1 + 5; 8 more blocks for 130 tokens do not fit
    free_before = worker.runner.blocks.num_free
    assert worker.ride([NewRequest("big", [1] + list(range(3, 132)), params, seed=0)]) == 0
    assert not worker.riding and worker.runner.blocks.num_free == free_before and "big" not in worker.book.states
    # released before any forward carried it: nothing rides
    assert worker.ride([NewRequest("gone", OTHER + [9, 9], params, seed=0)]) == 1
    worker.release(["gone"])
    assert not worker.riding
    worker.settle_riders()
    assert calls == [1]


def test_draft_carries_the_rider_in_its_next_proposal_which_it_leaves_unchanged():
    """LocalDraftWorker.ride: the chunk goes with the first forward of the next proposal, whose drafts
    are those of a draft without it, and the chunk's full blocks are cached afterwards."""
    from minedraft.assets import default_draft_path
    from minedraft.spec.local_workers import LocalDraftWorker

    def draft():
        return LocalDraftWorker(ModelRunner(default_draft_path(), num_kv_blocks=64, max_model_len=256))

    params = SamplingParams(temperature=0.0, max_tokens=8)
    plain, riding = draft(), draft()
    for worker in (plain, riding):
        worker.add([NewRequest("running", OTHER, params, seed=0)])
    calls, forward = [], riding.runner.forward
    riding.runner.forward = lambda *a, **kw: calls.append(len(kw.get("riders", ()))) or forward(*a, **kw)
    assert riding.ride([NewRequest("chunk", PROMPT, params, seed=0)]) == 1 and riding.riding
    assert calls == []  # nothing prefilled when offered
    want = plain.propose(["running"], 3, {})
    got = riding.propose(["running"], 3, {})
    assert calls == [1, 0, 0] and not riding.riding  # the first of its three forwards carried it
    assert torch.equal(got.tokens, want.tokens)
    riding.release(["chunk"])
    hits = riding.runner.blocks.prefix_cache_hits
    riding.add([NewRequest("reader", PROMPT + [7], params, seed=0)])
    assert riding.runner.blocks.prefix_cache_hits - hits == (len(PROMPT) // 16) * 16


def _service(role: str, model: str):
    from minedraft.launcher import LocalCluster

    from cluster import free_port

    port = free_port()
    cluster = LocalCluster({role: [sys.executable, "-m", f"{role}_service", "--model", model,
                                   "--port", str(port), "--threads", "1"]})
    cluster.start()
    address = f"127.0.0.1:{port}"
    try:
        cluster.wait_healthy({role: address}, timeout=120, progress=lambda m: None)
    except Exception:
        cluster.stop()
        raise
    return cluster, address


def test_a_rider_over_grpc_is_prefilled_by_the_next_decode_or_settle_never_when_offered(llama_pair):
    """RemoteTargetWorker.ride: an Add with `ride` reserves the chunk's blocks and prefills nothing; the
    service's next Decode carries it (the chunk's full blocks are then cached, and a request reading them
    decodes what transformers does), an Add with `ride` and no requests settles one no forward carried,
    and one released before any forward leaves nothing cached."""
    from minedraft.rpc.remote_workers import RemoteTargetWorker
    from minedraft.runner.hf_adapter import greedy_generate

    cluster, address = _service("target", llama_pair[0])
    worker = RemoteTargetWorker(address)
    try:
        # what the gateway sizes a chunk by (StagedPrefill._chunk_end), as the service's runner has it
        from minedraft.runner.model_runner import default_max_num_batched_tokens

        assert worker.max_num_batched_tokens == default_max_num_batched_tokens(torch.device("cpu"))
        assert worker.block_size == 16

        def hits():
            return worker.info().prefix_cache_hits

        def chunk(seed):  # 3 full blocks of 16 and a partial one
            return [1] + [(seed * 7 + 13 * j) % 90 + 3 for j in range(55)]

        def read_back(prompt, tail):
            """A request whose prompt starts with the chunk: its cached blocks, and its first tokens."""
            before = hits()
            rid = f"reader-{tail}"
            first = worker.add([NewRequest(rid, prompt + [tail], params, seed=0)])[0]
            out = [first] + [worker.decode([rid])[0] for _ in range(3)]
            worker.release([rid])
            return hits() - before, out

        params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
        running = NewRequest("running", OTHER, params, seed=0)
        assert worker.add([running])[0] is not None
        free = worker.info().num_free_kv_blocks
        carried = chunk(1)
        assert worker.ride([NewRequest("chunk-1", carried, params, seed=0)]) == 1 and worker.riding
        assert worker.info().num_free_kv_blocks == free - 4  # reserved when offered
        worker.decode(["running"])  # carries the chunk
        assert not worker.riding
        worker.release(["chunk-1"])
        hit, out = read_back(carried, 9)
        assert hit == 48 and out == greedy_generate(llama_pair[2], carried + [9], 4)

        settled = chunk(2)
        assert worker.ride([NewRequest("chunk-2", settled, params, seed=0)]) == 1
        worker.settle_riders()
        assert not worker.riding
        worker.release(["chunk-2"])
        assert read_back(settled, 9)[0] == 48

        dropped = chunk(3)
        assert worker.ride([NewRequest("chunk-3", dropped, params, seed=0)]) == 1
        worker.release(["chunk-3"])  # before any forward: it never rides
        assert read_back(dropped, 9)[0] == 0
        worker.release(["running"])
        assert worker.info().num_free_kv_blocks == worker.info().num_kv_blocks
    finally:
        worker.close()
        cluster.stop()


def test_a_draft_rider_over_grpc_waits_for_a_forward_and_is_settled_on_request(llama_pair):
    """RemoteDraftWorker.ride: an Add with `ride` prefills nothing; an Add with `ride` and no requests
    (settle_riders) prefills it (its full blocks are then cached); one released first leaves nothing."""
    from minedraft.rpc.remote_workers import RemoteDraftWorker

    cluster, address = _service("draft", llama_pair[1])
    worker = RemoteDraftWorker(address)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    chunk = [1] + [(13 * j) % 90 + 3 for j in range(55)]
    try:
        def hits_of(prompt, rid):
            before = worker.info().prefix_cache_hits
            worker.add([NewRequest(rid, prompt + [9], params, seed=0)])
            worker.release([rid])
            return worker.info().prefix_cache_hits - before

        assert worker.ride([NewRequest("dropped", chunk, params, seed=0)]) == 1 and worker.riding
        worker.release(["dropped"])
        assert hits_of(chunk, "first") == 0  # nothing was prefilled when offered
        other = [1] + [(17 * j) % 90 + 3 for j in range(55)]
        assert worker.ride([NewRequest("settled", other, params, seed=0)]) == 1
        worker.settle_riders()
        assert not worker.riding
        worker.release(["settled"])
        assert hits_of(other, "second") == 48
        assert worker.info().num_free_kv_blocks == worker.info().num_kv_blocks
    finally:
        worker.close()
        cluster.stop()
