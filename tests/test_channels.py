"""Token channels (inline, shm): round trips, ring wrap-around, staleness, limits, negotiation,
a reader in another process, clean-up. CUDA IPC lives in test_channels_gpu.py."""

import multiprocessing as mp

import pytest
import torch

from minedraft.rpc.channels import (
    BlockRef,
    BlockTooLargeError,
    ChannelError,
    ChannelSpec,
    NegotiationError,
    StaleBlockError,
    choose_transport,
    local_capabilities,
    make_writer,
    open_reader,
)

SMALL = dict(max_batch=4, max_k=3, vocab=50)


def _block(seed, b=4, k=3, v=50, probs=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32000, (b, k), generator=g)
    if not probs:
        return tokens, None
    return tokens, torch.softmax(torch.randn(b, k, v, generator=g), -1).to(dtype)


@pytest.fixture(params=["inline", "shm"])
def channel(request):
    writer = make_writer(request.param, "cpu", num_slots=3, **SMALL)
    reader = open_reader(ChannelSpec.from_dict(writer.spec().to_dict()))
    yield writer, reader
    reader.close()
    writer.close()


def _wire(ref: BlockRef) -> BlockRef:
    return BlockRef.from_dict(ref.to_dict())  # what a protobuf round trip does


def test_tokens_only_round_trip(channel):
    writer, reader = channel
    tokens, _ = _block(0, probs=False)
    ref = writer.write(tokens)
    assert not ref.has_probs and ref.vocab == 0
    out, probs = reader.read(_wire(ref), "cpu")
    assert probs is None and out.dtype == torch.int64 and torch.equal(out, tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tokens_and_probs_round_trip(channel, dtype):
    writer, reader = channel
    tokens, probs = _block(1, dtype=dtype)
    ref = writer.write(tokens, probs)
    assert (ref.batch, ref.k, ref.vocab, ref.has_probs) == (4, 3, 50, True)
    out_t, out_p = reader.read(_wire(ref))
    assert torch.equal(out_t, tokens) and out_p.dtype == dtype and torch.equal(out_p, probs)


def test_smaller_blocks_and_int32_tokens(channel):
    writer, reader = channel
    tokens, probs = _block(2, b=2, k=1, v=7)
    ref = writer.write(tokens.to(torch.int32), probs)
    out_t, out_p = reader.read(_wire(ref))
    assert out_t.dtype == torch.int32 and torch.equal(out_t.long(), tokens) and torch.equal(out_p, probs)


def test_read_results_own_their_memory(channel):
    writer, reader = channel
    tokens, probs = _block(3)
    out_t, out_p = reader.read(_wire(writer.write(tokens, probs)))
    for i in range(7):  # overwrite every slot several times
        writer.write(*_block(100 + i))
    assert torch.equal(out_t, tokens) and torch.equal(out_p, probs)


def test_wrap_around(channel):
    writer, reader = channel
    refs = []
    for i in range(3 * 3):  # 3 x num_slots
        tokens, probs = _block(10 + i, probs=i % 2 == 0)
        ref = writer.write(tokens, probs)
        out_t, out_p = reader.read(_wire(ref))
        assert torch.equal(out_t, tokens)
        assert (out_p is None) if probs is None else torch.equal(out_p, probs)
        refs.append(ref)
    if writer.transport == "shm":
        assert [r.slot for r in refs] == [0, 1, 2] * 3
        assert len({r.generation for r in refs}) == 9
        for old in refs[:6]:  # their slots were written again since
            with pytest.raises(StaleBlockError):
                reader.read(old)
        reader.read(refs[-1])  # the newest three are still there


def test_torn_slot_is_stale():
    # A writer caught mid-write zeroes the slot's generation first: the reader must refuse the block.
    with make_writer("shm", num_slots=2, **SMALL) as writer:
        with open_reader(writer.spec()) as reader:
            ref = writer.write(*_block(4))
            writer._ring[ref.offset + 8:ref.offset + 16].zero_()
            with pytest.raises(StaleBlockError):
                reader.read(ref)


def test_block_too_large(channel):
    writer, _ = channel
    with pytest.raises(BlockTooLargeError, match="max_batch=4"):
        writer.write(*_block(5, b=5))
    with pytest.raises(BlockTooLargeError):
        writer.write(*_block(5, v=51))
    writer.write(*_block(5, b=8, k=1, v=10))  # only bytes count, not each dimension


def test_probs_of_the_sampled_rows_only(channel):
    """Greedy rows send no q: a block of 4 token rows can carry q for 2 of them, and costs less."""
    writer, reader = channel
    tokens, probs = _block(2)
    full = writer.write(tokens, probs)
    ref = writer.write(tokens, probs[[1, 3]])
    assert ref.nbytes < full.nbytes
    out_t, out_p = reader.read(_wire(ref))
    assert torch.equal(out_t, tokens) and out_p.shape == (2, 3, 50) and torch.equal(out_p, probs[[1, 3]])


def test_bad_shapes_raise(channel):
    writer, _ = channel
    with pytest.raises(ChannelError):
        writer.write(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ChannelError):
        writer.write(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4, 5))
    with pytest.raises(ChannelError):  # more q rows than token rows
        writer.write(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 3, 5))


def test_default_capacity_fits_b64_k8_v8192():
    with make_writer("shm") as writer:
        with open_reader(writer.spec()) as reader:
            tokens, probs = _block(6, b=64, k=8, v=8192)
            out_t, out_p = reader.read(writer.write(tokens, probs))
            assert torch.equal(out_t, tokens) and torch.equal(out_p, probs)


def test_spec_and_ref_dict_round_trip():
    spec = ChannelSpec("cuda_ipc", handle=b"\x01\x02", device="cuda:1", num_slots=4, slot_bytes=128)
    assert ChannelSpec.from_dict(spec.to_dict()) == spec
    assert ChannelSpec.from_dict({"transport": "inline", "unknown_field": 1}).handle == b""
    ref = BlockRef("inline", 0, 0, 64, 1, 0, 0, 0, False, payload=b"x")
    assert BlockRef.from_dict(ref.to_dict()) == ref


# --- negotiation ---------------------------------------------------------------------------------

def test_local_capabilities_cpu():
    assert local_capabilities("cpu") == ["shm", "inline"]
    if not torch.cuda.is_available():
        assert "cuda_ipc" not in local_capabilities("cuda:0")


def test_choose_best_common():
    full = ["cuda_ipc", "shm", "inline"]
    assert choose_transport(full, full, same_host=True) == "cuda_ipc"
    assert choose_transport(full, ["shm", "inline"], same_host=True) == "shm"
    assert choose_transport(["inline", "shm"], ["inline", "shm"], same_host=True) == "shm"
    assert choose_transport(full, full, same_host=False) == "inline"


def test_choose_forced():
    full = ["cuda_ipc", "shm", "inline"]
    assert choose_transport(full, full, same_host=True, forced="inline") == "inline"
    assert choose_transport(full, full, same_host=True, forced="shm") == "shm"
    with pytest.raises(NegotiationError) as e:
        choose_transport(full, ["shm", "inline"], same_host=True, forced="cuda_ipc")
    assert "['cuda_ipc', 'shm', 'inline']" in str(e.value) and "['shm', 'inline']" in str(e.value)
    with pytest.raises(NegotiationError, match="same_host=False"):
        choose_transport(full, full, same_host=False, forced="shm")
    with pytest.raises(NegotiationError):
        choose_transport(["shm"], ["inline"], same_host=True)


def test_unknown_transport_and_cuda_without_cupy():
    with pytest.raises(ChannelError):
        make_writer("carrier_pigeon")
    with pytest.raises(ChannelError):
        open_reader(ChannelSpec("carrier_pigeon"))
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ChannelError, match="CuPy"):
            make_writer("cuda_ipc", "cuda:0")


# --- another process, clean-up ---------------------------------------------------------------------

def _child_read(spec_dict, ref_dicts, queue):
    # Runs in a spawned process: attach once by spec, read every ref, send back the blocks.
    from minedraft.rpc.channels import BlockRef, ChannelSpec, open_reader

    reader = open_reader(ChannelSpec.from_dict(spec_dict))
    out = []
    for d in ref_dicts:
        tokens, probs = reader.read(BlockRef.from_dict(d))
        # numpy, not tensors: torch would share tensors through fds that die with this process
        out.append((tokens.sum().item(), None if probs is None else probs.double().sum().item(),
                    tokens.numpy(), None if probs is None else probs.numpy()))
    reader.close()
    queue.put(out)


def test_shm_reader_in_other_process():
    ctx = mp.get_context("spawn")
    with make_writer("shm", num_slots=4, **SMALL) as writer:
        blocks = [_block(20 + i, probs=i != 1) for i in range(3)]
        refs = [writer.write(t, p).to_dict() for t, p in blocks]
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_read, args=(writer.spec().to_dict(), refs, queue))
        proc.start()
        out = queue.get(timeout=120)
        proc.join(timeout=60)
        assert proc.exitcode == 0
        for (tokens, probs), (tsum, psum, t2, p2) in zip(blocks, out):
            assert tsum == tokens.sum().item() and torch.equal(torch.from_numpy(t2), tokens)
            if probs is None:
                assert psum is None and p2 is None
            else:
                assert psum == probs.double().sum().item() and torch.equal(torch.from_numpy(p2), probs)
        # The child's exit must not have unlinked the producer's segment.
        with open_reader(writer.spec()) as reader:
            t, p = blocks[0]
            assert torch.equal(reader.read(BlockRef.from_dict(refs[0]))[1], p)


def test_shm_cleanup_on_close():
    writer = make_writer("shm", num_slots=2, **SMALL)
    spec = writer.spec()
    reader = open_reader(spec)
    reader.close()
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ChannelError):
        open_reader(spec)
    with pytest.raises(ChannelError):
        writer.write(*_block(7))
