"""Feature channels (minedraft/rpc/channels/features.py): the target's hidden states written by one
process and read by another, over inline and shm (and cuda_ipc on a GPU machine with CuPy): rows
come back bit-exact under their request and positions, a block larger than a ring slot spills
inline, an overwritten slot reads as stale, a span that does not match its block is refused."""

import multiprocessing as mp

import pytest
import torch
from gpu_support import cuda_and_cupy

from minedraft.rpc.channels import ChannelError, StaleBlockError
from minedraft.rpc.channels.base import BlockRef, ChannelSpec
from minedraft.rpc.channels.features import FeatureReader, FeatureWriter, Span
from minedraft.rpc.feature_relay import FeatureRelay
from minedraft.rpc.grpc_common import feature_block_from_proto, feature_block_to_proto

HIDDEN = 32


def _rows(seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [("a", 0, torch.randn(5, HIDDEN, generator=g).to(device, dtype)),
            ("b", 7, torch.randn(2, HIDDEN, generator=g).to(device, dtype))]


def _child_read(spec, blocks, device, queue):
    """Another process: open the channel once, read every block; send back (rid, start, rows) or "stale"."""
    try:
        reader = FeatureReader(ChannelSpec.from_dict(spec))
        out = []
        for ref, spans in blocks:
            try:
                got = reader.read(BlockRef.from_dict(ref), [Span(*s) for s in spans], device)
            except StaleBlockError:
                out.append("stale")
                continue
            # numpy, not tensors: torch would share tensors through fds that die with this process
            out.append([(rid, start, f.float().cpu().numpy()) for rid, start, f in got])
        reader.close()
    except Exception as exc:  # report instead of hanging the parent
        out = f"{type(exc).__name__}: {exc}"
    queue.put(out)


def _read_in_child(writer, written, device="cpu"):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    blocks = [(ref.to_dict(), [(s.request_id, s.start, s.row, s.rows) for s in spans]) for ref, spans in written]
    proc = ctx.Process(target=_child_read, args=(writer.spec().to_dict(), blocks, device, queue))
    proc.start()
    out = queue.get(timeout=120)
    proc.join(30)
    assert not isinstance(out, str), out
    return out


def _same(got, rows):
    assert [(rid, start) for rid, start, _ in got] == [(rid, start) for rid, start, _ in rows]
    for (_, _, g), (_, _, r) in zip(got, rows):
        assert torch.equal(torch.as_tensor(g), r.float().cpu())


@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_rows_cross_processes_exactly(transport):
    writer = FeatureWriter(transport, "cpu", HIDDEN, torch.float32, max_rows=16, num_slots=4)
    try:
        written = [writer.write(_rows(s)) for s in range(3)]
        assert all(ref.transport == transport for ref, _ in written)
        for got, seed in zip(_read_in_child(writer, written), range(3)):
            _same(got, _rows(seed))
    finally:
        writer.close()


def test_shm_block_larger_than_a_slot_spills_inline_and_an_overwritten_slot_is_stale():
    writer = FeatureWriter("shm", "cpu", HIDDEN, torch.float32, max_rows=4, num_slots=2)
    try:
        big = writer.write(_rows(0))  # 7 rows > 4
        assert big[0].transport == "inline" and len(big[0].payload) == big[0].nbytes
        small = [writer.write([("c", 3, torch.ones(2, HIDDEN) * i)]) for i in range(2)]
        writer.done_with(["c"])  # (said too early: a reader that lags behind what the target was told)
        small.append(writer.write([("c", 3, torch.ones(2, HIDDEN) * 2)]))  # 3 writes, 2 slots
        got = _read_in_child(writer, [big, *small])
        _same(got[0], _rows(0))
        assert got[1] == "stale"  # slot 0 written again by the third small block
        assert torch.equal(torch.as_tensor(got[3][0][2]), torch.ones(2, HIDDEN) * 2)
    finally:
        writer.close()


def test_a_slot_is_reused_only_once_its_requests_are_done_and_a_full_ring_spills_inline():
    """A request decoding target-only keeps its blocks unread: the ring never overwrites them (a block
    past the ring's slots goes inline), and a slot frees once its requests are verified or gone."""
    writer = FeatureWriter("shm", "cpu", HIDDEN, torch.float32, max_rows=4, num_slots=2)
    try:
        held = [writer.write([("a", i, torch.ones(1, HIDDEN) * i)]) for i in range(3)]
        assert [ref.transport for ref, _ in held] == ["shm", "shm", "inline"]  # both slots still wait for a
        assert writer.spilled == 1
        got = _read_in_child(writer, held)
        for i, block in enumerate(got):  # none stale
            assert torch.equal(torch.as_tensor(block[0][2]), torch.ones(1, HIDDEN) * i)
        writer.done_with(["a"])  # a was verified: it read them all
        again = writer.write([("b", 0, torch.ones(1, HIDDEN))])
        writer.done_with(alive={"c"})  # b left the target
        assert again[0].transport == "shm" and writer.readers == {}
    finally:
        writer.close()


def test_nothing_to_write_and_a_span_that_does_not_match_its_block():
    writer = FeatureWriter("inline", "cpu", HIDDEN, torch.float32, max_rows=16)
    assert writer.write([("a", 0, torch.zeros(0, HIDDEN))]) is None
    ref, spans = writer.write(_rows(1))
    reader = FeatureReader(writer.spec())
    with pytest.raises(ChannelError, match="does not match"):
        reader.read(ref, [Span("b", 6, 5, 2)])  # b's rows start at position 7


def test_relay_hands_each_node_only_its_requests_rows():
    """Spans of one block split between requests: a node gets a block with only its requests' spans,
    once; spans of a request on a node without a feature channel are dropped with it."""
    writer = FeatureWriter("inline", "cpu", HIDDEN, torch.float32, max_rows=16)
    relay = FeatureRelay()
    msg = feature_block_to_proto("inline", *writer.write(_rows(2)))
    assert relay.put([msg]) == msg.block.nbytes
    blocks = relay.take(["b"], "inline")
    assert [[(s.request_id, s.start, s.row, s.rows) for s in b.spans] for b in blocks] == [[("b", 7, 5, 2)]]
    assert relay.take(["b"], "inline") == []
    _channel, ref, spans = feature_block_from_proto(blocks[0])
    (rid, start, rows), = FeatureReader(writer.spec()).read(ref, spans)
    assert (rid, start) == ("b", 7) and torch.equal(rows, _rows(2)[1][2])
    relay.drop(["a"])
    assert len(relay) == 0



def test_a_reply_that_lands_after_its_request_left_is_swept_at_the_next_release():
    """An aborted request whose verify was in flight: its drop came first, the reply's spans after.
    The pool's next release forgets the spans of every request that no longer runs (not a request
    admitted while target-only, which runs without a draft node yet)."""
    from gateway.draft_pool import DraftPool
    from minedraft.spec.sampling import SamplingParams
    from minedraft.spec.workers import NewRequest

    running = {"live": NewRequest("live", [1, 2], SamplingParams(), 0, resume=True)}
    pool = DraftPool([], target=None, target_info=None, transport=None)
    pool.attach(running.__getitem__)
    pool.release_later(["gone"])  # the scheduler retires the aborted request ...
    writer = FeatureWriter("inline", "cpu", HIDDEN, torch.float32, max_rows=16)
    rows = [("gone", 0, torch.ones(3, HIDDEN)), ("live", 0, torch.ones(2, HIDDEN))]
    pool.features.relay.put([feature_block_to_proto("inline", *writer.write(rows))])  # ... then its verify lands
    assert len(pool.features.relay) == 2
    pool.release_later(["another"])
    assert len(pool.features.relay) == 1
    assert [s.request_id for b in pool.features.relay.take(["live"], "inline") for s in b.spans] == ["live"]
    pool.close()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_cupy(), reason="needs CUDA and CuPy")
def test_cuda_ipc_rows_cross_processes_exactly():
    writer = FeatureWriter("cuda_ipc", "cuda:0", HIDDEN, torch.bfloat16, max_rows=16, num_slots=4)
    try:
        written = [writer.write(_rows(s, "cuda:0", torch.bfloat16)) for s in range(3)]
        assert all(ref.transport == "cuda_ipc" for ref, _ in written)
        for got, seed in zip(_read_in_child(writer, written, "cuda:0"), range(3)):
            _same(got, _rows(seed, "cuda:0", torch.bfloat16))
    finally:
        writer.close()
