"""A failure that belongs to one request fails that request alone: faults injected in a real target
service's worker (tests/faulty_target.py) and a seed the old signed field could not carry, while other
greedy streams run; those finish with exactly the target-only tokens."""

import pathlib
import sys
import threading

import grpc
import pytest
from test_recovery import PROMPTS, Stack, expected_tokens

from minedraft import SamplingParams
from minedraft.client import MineDraftClient

N_TOKENS = 48
HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("faults"), target_program=[sys.executable, str(HERE / "faulty_target.py")])
    yield s
    s.stop()


def _stream(address, prompt, out, i, **kwargs):
    try:
        with MineDraftClient(address) as client:
            for chunk in client.generate(prompt, timeout=180, max_tokens=N_TOKENS, ignore_eos=True, **kwargs):
                out[i][0].extend(chunk.token_ids)
    except grpc.RpcError as exc:
        out[i][1] = exc


def test_per_request_faults_fail_only_that_request(stack):
    expected = expected_tokens(SamplingParams(max_tokens=N_TOKENS, ignore_eos=True), "ar")[:4]
    address = stack.addr["gateway"]
    good = [[[], None] for _ in range(4)]
    threads = [threading.Thread(target=_stream, args=(address, PROMPTS[i], good, i)) for i in range(4)]
    bad = [[[], None] for _ in range(3)]
    # The hostile ones: refused in Add, failing mid-stream in Verify, and a seed >= 2**63.
    threads += [threading.Thread(target=_stream, args=(address, PROMPTS[4], bad, 0),
                                 kwargs={"request_id": "poison-add-1"}),
                threading.Thread(target=_stream, args=(address, PROMPTS[5], bad, 1),
                                 kwargs={"request_id": "poison-verify-1"}),
                threading.Thread(target=_stream, args=(address, "x", bad, 2),
                                 kwargs={"seed": 2**63, "temperature": 0.7})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "a stream hangs"
    assert [err for _, err in good] == [None] * 4
    assert [tokens for tokens, _ in good] == expected
    (add_tokens, add_err), (verify_tokens, verify_err), (seed_tokens, seed_err) = bad
    assert add_err is not None and add_err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "injected fault in add" in add_err.details() and not add_tokens
    assert verify_err is not None and verify_err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "injected fault in verify" in verify_err.details() and 0 < len(verify_tokens) < N_TOKENS
    assert seed_err is None and len(seed_tokens) == N_TOKENS
    log = stack.log("gateway")
    assert "failed alone" in log and "target call failed" not in log  # no worker failure, no recovery
    with MineDraftClient(address) as client:  # the maximum seed, alone
        assert len(client.generate_ids("x", max_tokens=4, ignore_eos=True, seed=2**64 - 1, temperature=1.0)[0]) == 4
