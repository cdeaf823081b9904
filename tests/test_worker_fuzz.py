"""Random and extreme Add / Propose / Verify / Decode / Release messages straight to real draft and
target services (no gateway in front to filter them): each gets a clean status (never INTERNAL or
UNKNOWN, which would mean the message reached code that did not expect it), and both services keep
serving: afterwards a well-formed request is drafted and verified exactly as on fresh services."""

import random
import subprocess
import sys
import time

import grpc
import pytest

from minedraft.rpc.grpc_common import check_health, insecure_channel
from minedraft.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from cluster import free_port

CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
INT32 = [0, 1, -1, 2, 3, 5, 17, 4095, 4096, 2**31 - 1, -(2**31)]
INT64 = [0, 1, -1, 7, 2**40, 2**63 - 1, -(2**63)]
IDS = ["r0", "r1", "r0", "r1", "", "ghost", "x" * 500, "é\x00"]  # mostly ids that get admitted
VALID = [1, 2, 3, 4, 8]  # plausible k and token ids, so that many calls reach the model
FLOATS = [0.0, 0.7, 1.0, -1.0, 1e30, float("inf"), float("nan")]


def _start(module, port, log):
    return subprocess.Popen([sys.executable, "-m", module, "--port", str(port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("worker_fuzz")
    ports = {"target": free_port(), "draft": free_port()}
    procs = {name: _start(f"{name}_service", port, open(logs / f"{name}.log", "w")) for name, port in ports.items()}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    deadline = time.monotonic() + 120
    for name in procs:
        while not check_health(addr[name], timeout=1.0):
            assert procs[name].poll() is None and time.monotonic() < deadline, (logs / f"{name}.log").read_text()
            time.sleep(0.2)
    channels = {name: insecure_channel(a) for name, a in addr.items()}
    stubs = {"target": worker_pb2_grpc.TargetWorkerStub(channels["target"]),
             "draft": worker_pb2_grpc.DraftWorkerStub(channels["draft"])}
    # A real token channel between them (inline: the proposal's bytes ride in the reply), as a gateway opens.
    info = stubs["target"].Info(worker_pb2.InfoRequest())
    hs = stubs["draft"].Handshake(worker_pb2.HandshakeRequest(
        reader_transports=list(info.transports), reader_hostname=info.hostname, forced_transport="inline",
        channel_id="fuzz"))
    stubs["target"].OpenChannel(worker_pb2.OpenChannelRequest(channel_id="fuzz", spec=hs.spec))
    yield stubs, addr, procs, logs, info
    for ch in channels.values():
        ch.close()
    for p in procs.values():
        p.kill()
        p.wait()


def params(rng):
    p = common_pb2.SamplingParams(temperature=rng.choice(FLOATS), top_p=rng.choice(FLOATS),
                                  top_k=rng.choice(INT32), max_tokens=rng.choice(INT32),
                                  stop_token_ids=[rng.choice(INT32) for _ in range(rng.randrange(3))],
                                  ignore_eos=rng.random() < 0.5)
    if rng.random() < 0.5:
        p.seed = rng.choice([0, 1, 2**63, 2**64 - 1])
    return p


def random_add(rng):
    reqs = [worker_pb2.NewRequest(request_id=rng.choice(IDS), params=params(rng) if rng.random() < 0.5 else None,
                                  prompt_ids=[rng.choice(VALID + INT32)
                                              for _ in range(rng.choice([0, 1, 3, 40, 5000]))],
                                  seed=rng.choice([0, 1, 2**64 - 1]), resume=rng.random() < 0.3)
            for _ in range(rng.choice([0, 1, 2, 3]))]
    return worker_pb2.AddRequest(requests=reqs, release_ids=rng.sample(IDS, rng.randrange(2)))


def random_ids(rng):
    return [rng.choice(IDS) for _ in range(rng.choice([0, 1, 2, 3]))]


def random_propose(rng):
    updates = {rng.choice(IDS): common_pb2.TokenList(tokens=[rng.choice(INT32) for _ in range(rng.randrange(4))])
               for _ in range(rng.randrange(3))}
    return worker_pb2.ProposeRequest(request_ids=random_ids(rng), k=rng.choice(VALID + INT32), updates=updates,
                                     release_ids=rng.sample(IDS, rng.randrange(2)))


def random_block(rng, real):
    if real is not None and rng.random() < 0.5:
        ref = worker_pb2.BlockRef()
        ref.CopyFrom(real)
        field = rng.choice(["slot", "offset", "nbytes", "generation", "batch", "k", "vocab", "payload", "has_probs",
                            "transport"])
        value = {"payload": rng.choice([b"", b"\x00" * 7, real.payload[:-1]]), "has_probs": not real.has_probs,
                 "transport": rng.choice(["", "shm", "cuda_ipc", "bogus"])}.get(field)
        setattr(ref, field, value if value is not None else rng.choice(INT32 if field in ("slot", "batch", "k", "vocab")
                                                                         else INT64))
        return ref
    return worker_pb2.BlockRef(transport=rng.choice(["inline", "shm", ""]), slot=rng.choice(INT32),
                               offset=rng.choice(INT64), nbytes=rng.choice(INT64), batch=rng.choice(INT32),
                               k=rng.choice(INT32), vocab=rng.choice(INT32), payload=rng.choice([b"", b"\x01" * 9]))


def random_verify(rng, real):
    parts = [worker_pb2.ProposalPart(channel_id=rng.choice(["fuzz", "fuzz", "other", ""]),
                                     block=random_block(rng, real),
                                     num_requests=rng.choice(VALID + INT32)) for _ in range(rng.choice([0, 1, 1, 2]))]
    return worker_pb2.VerifyRequest(request_ids=random_ids(rng), k=rng.choice(VALID + INT32), parts=parts,
                                    lengths=[rng.choice(INT32) for _ in range(rng.choice([0, 0, 1, 3]))],
                                    release_ids=rng.sample(IDS, rng.randrange(2)))


def good_round(stubs, rid="good"):
    """One real request: prefilled on both, one proposal of 3, verified; returns its tokens."""
    prompt = [5, 6, 7, 8, 9, 10]
    req = worker_pb2.AddRequest(requests=[worker_pb2.NewRequest(
        request_id=rid, prompt_ids=prompt, params=common_pb2.SamplingParams(max_tokens=16), seed=1)])
    first = stubs["target"].Add(req).first_tokens[0]
    stubs["draft"].Add(req)
    proposal = stubs["draft"].Propose(worker_pb2.ProposeRequest(
        request_ids=[rid], k=3, updates={rid: common_pb2.TokenList(tokens=[first])}))
    verdict = stubs["target"].Verify(worker_pb2.VerifyRequest(request_ids=[rid], k=3, parts=[
        worker_pb2.ProposalPart(channel_id="fuzz", block=proposal.block, num_requests=1)]))
    for stub in stubs.values():
        stub.Release(worker_pb2.ReleaseRequest(request_ids=[rid]))
    return proposal.block, [first, *verdict.tokens[0].tokens]


def test_worker_services_fuzzed(workers):
    stubs, addr, procs, logs, info = workers
    real_block, before = good_round(stubs)
    rng = random.Random(7)
    codes = {}
    for i in range(400):
        kind = rng.choice(["t.add", "d.add", "propose", "verify", "decode", "release"])
        try:
            if kind == "t.add":
                stubs["target"].Add(random_add(rng), timeout=60)
            elif kind == "d.add":
                stubs["draft"].Add(random_add(rng), timeout=60)
            elif kind == "propose":
                stubs["draft"].Propose(random_propose(rng), timeout=60)
            elif kind == "verify":
                stubs["target"].Verify(random_verify(rng, real_block), timeout=60)
            elif kind == "decode":
                stubs["target"].Decode(worker_pb2.DecodeRequest(request_ids=random_ids(rng),
                                                                release_ids=rng.sample(IDS, rng.randrange(2))),
                                       timeout=60)
            else:
                stub = stubs[rng.choice(["target", "draft"])]
                stub.Release(worker_pb2.ReleaseRequest(request_ids=random_ids(rng)), timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in CLEAN, f"{kind} #{i}: {code.name}: {exc.details()}"
        codes[(kind, code.name)] = codes.get((kind, code.name), 0) + 1
    print(f"worker fuzz: {dict(sorted(codes.items()))}")
    assert all(p.poll() is None for p in procs.values())
    assert all(check_health(a) for a in addr.values())
    for stub in stubs.values():  # whatever the fuzz left admitted goes, then the real thing works as before
        stub.Release(worker_pb2.ReleaseRequest(request_ids=IDS))
    assert good_round(stubs, "good-again")[1] == before
    assert stubs["target"].Info(worker_pb2.InfoRequest()).num_active == 0
