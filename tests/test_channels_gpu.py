"""CUDA IPC token channel between two processes (spawn), on one device and across devices.
Skipped without CUDA and CuPy."""

import multiprocessing as mp

import pytest
import torch
from gpu_support import cuda_and_cupy

from minedraft.rpc.channels import BlockRef, ChannelError, StaleBlockError, make_writer, open_reader

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_and_cupy(), reason="needs CUDA and CuPy")]
two_gpus = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                              reason="needs 2 GPUs")


def _block(seed, device, b=8, k=4, v=1000, dtype=torch.float32, probs=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32000, (b, k), generator=g)
    p = torch.softmax(torch.randn(b, k, v, generator=g), -1).to(dtype) if probs else None
    return tokens.to(device), None if p is None else p.to(device)


def _child_read(spec_dict, jobs, queue):
    # Spawned consumer: open the producer's ring once, read each (ref, device), send back numpy.
    from minedraft.rpc.channels import ChannelSpec, open_reader

    out = []
    try:
        reader = open_reader(ChannelSpec.from_dict(spec_dict))
        for ref_dict, device in jobs:
            try:
                tokens, probs = reader.read(BlockRef.from_dict(ref_dict), device)
            except StaleBlockError:
                out.append("stale")
                continue
            assert tokens.device == torch.device(device)
            out.append((tokens.cpu().numpy(), None if probs is None else probs.float().cpu().numpy()))
        reader.close()
    except Exception as e:  # report instead of hanging the parent
        out = f"{type(e).__name__}: {e}"
    queue.put(out)


def _run_child(writer, jobs):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(writer.spec().to_dict(), jobs, queue))
    proc.start()
    out = queue.get(timeout=300)
    proc.join(timeout=60)
    assert not isinstance(out, str), out
    assert proc.exitcode == 0
    return out


def _check(out, tokens, probs):
    assert torch.equal(torch.from_numpy(out[0]), tokens.cpu())
    if probs is None:
        assert out[1] is None
    else:
        assert torch.equal(torch.from_numpy(out[1]), probs.float().cpu())


def _round_trip(writer_device, reader_device):
    with make_writer("cuda_ipc", writer_device, num_slots=4, max_batch=8, max_k=4, vocab=1000) as writer:
        stale = writer.write(*_block(0, writer_device))  # slot 0, overwritten by the 4th block below
        blocks = [_block(1, writer_device), _block(2, writer_device, probs=False),
                  _block(3, writer_device, dtype=torch.float16), _block(4, "cpu")]
        refs = [writer.write(t, p) for t, p in blocks]
        assert [r.slot for r in refs] == [1, 2, 3, 0]
        jobs = [(r.to_dict(), reader_device) for r in refs]
        jobs += [(refs[-1].to_dict(), "cpu"), (stale.to_dict(), reader_device)]
        out = _run_child(writer, jobs)
    for o, (t, p) in zip(out, blocks):
        _check(o, t, p)
    _check(out[4], *blocks[-1])
    assert out[5] == "stale"


def test_cuda_ipc_two_processes_one_device():
    _round_trip("cuda:0", "cuda:0")


@two_gpus
def test_cuda_ipc_across_devices():
    _round_trip("cuda:0", "cuda:1")
    _round_trip("cuda:1", "cuda:0")


def test_cuda_ipc_open_in_same_process_raises():
    with make_writer("cuda_ipc", "cuda:0", num_slots=2, max_batch=2, max_k=2, vocab=0) as writer:
        with pytest.raises(ChannelError, match="process that exported"):
            open_reader(writer.spec())


def test_shm_reader_to_cuda():
    with make_writer("shm", num_slots=2, max_batch=8, max_k=4, vocab=1000) as writer:
        with open_reader(writer.spec()) as reader:
            tokens, probs = _block(10, "cuda:0")
            t2, p2 = reader.read(writer.write(tokens, probs), "cuda:0")
            assert t2.is_cuda and torch.equal(t2, tokens) and torch.equal(p2, probs)
