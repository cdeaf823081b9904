"""The model-free proposers (minedraft/drafting/ngram.py, suffix.py) against brute-force searches."""

import random
import tracemalloc

import numpy as np
import pytest

from minedraft.drafting.ngram import NgramProposer, ngram_propose
from minedraft.drafting.suffix import NODE_BYTES, RequestIndex, SuffixParams, SuffixProposer, SuffixTrie
from minedraft.drafting.worker import ModelFreeDraftWorker, make_proposer
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest


def brute_ngram(tokens, k, min_n, max_n):
    total = len(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n:]
        for end in range(total - 2, n - 2, -1):  # the latest earlier occurrence
            if tokens[end - n + 1:end + 1] == suffix:
                return tokens[end + 1:end + 1 + k]
    return []


@pytest.mark.parametrize("vocab", [2, 3, 8])
def test_ngram_matches_brute_force(vocab):
    rng = random.Random(vocab)
    for _ in range(400):
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        min_n, max_n = rng.choice([(1, 1), (1, 3), (2, 5), (3, 4)])
        k = rng.randrange(1, 7)
        got = ngram_propose(np.array(tokens, dtype=np.int64), k, min_n, max_n)
        assert got == brute_ngram(tokens, k, min_n, max_n), (tokens, k, min_n, max_n)


def test_ngram_proposer_follows_appends():
    p = NgramProposer(2, 3)
    p.add("a", [5, 6, 7, 8, 9, 5])
    assert p.propose("a", 4) == ([], [])  # only a 1-gram matches
    p.extend("a", [6])
    assert p.propose("a", 4) == ([7, 8, 9, 5], [1.0] * 4)
    p.extend("a", list(range(100, 300)))  # grows past its first buffer
    assert len(p.histories["a"]) == 207
    p.release("a")
    assert "a" not in p


def brute_counts(seqs, path):
    """(occurrences of path in seqs, occurrences followed by a token)."""
    n, out = 0, 0
    for s in seqs:
        for i in range(len(s) - len(path) + 1):
            if s[i:i + len(path)] == path:
                n += 1
                out += i + len(path) < len(s)
    return n, out


def _all_nodes(trie):
    stack = [((), trie.root)]
    while stack:
        path, node = stack.pop()
        yield list(path), node
        stack.extend((path + (t,), c) for t, c in node.children.items())


def _check_against(trie, seqs, depth):
    seen = 0
    for path, node in _all_nodes(trie):
        if not path:
            continue
        assert len(path) <= depth
        count, out = brute_counts(seqs, path)
        assert (node.count, node.out) == (count, out if len(path) < depth else 0), path
        seen += 1
    # every substring up to depth is there
    subs = {tuple(s[i:j]) for s in seqs for i in range(len(s)) for j in range(i + 1, min(len(s), i + depth) + 1)}
    assert seen == len(subs) == trie.num_nodes - 1


def test_suffix_trie_counts_match_brute_force_with_removal():
    rng = random.Random(0)
    depth = 5
    seqs = [[rng.randrange(4) for _ in range(rng.randrange(1, 30))] for _ in range(6)]
    trie = SuffixTrie(depth)
    for s in seqs:
        trie.insert(s)
    _check_against(trie, seqs, depth)
    for s in seqs[:3]:
        trie.remove(s)
    _check_against(trie, seqs[3:], depth)
    for s in seqs[3:]:
        trie.remove(s)
    assert trie.num_nodes == 1 and not trie.root.children


def test_request_index_grown_by_chunks_answers_as_the_trie_of_its_tokens():
    """The request's array index against the trie the proposer kept before (a SuffixTrie of the same
    tokens): the same match length and the same walk, at every step of a request grown in chunks."""
    rng = random.Random(1)
    compared = 0
    for _ in range(60):
        tokens = [rng.randrange(rng.choice([2, 3, 6])) for _ in range(rng.randrange(1, 60))]
        depth = rng.randrange(2, 9)
        cut = rng.randrange(1, len(tokens) + 1)
        index = RequestIndex(depth, tokens[:cut])
        i = cut
        while True:
            trie = SuffixTrie(depth)
            trie.insert(tokens[:i])
            for k in (1, 3, depth + 2):  # k past depth: the depth bound stops the walk
                room = max(1, depth - k)
                m_trie, node = trie.longest_match(tokens[:i][-room:])
                m, ends = index.longest_match(room)
                assert m == m_trie, (tokens[:i], depth, k)
                if m:
                    for min_prob in (0.0, 0.3):
                        want = trie.walk(node, k, min_prob)
                        assert index.walk(ends, m, k, min_prob) == want
                        compared += len(want[0]) > 1
            if i == len(tokens):
                break
            j = min(len(tokens), i + rng.randrange(1, 4))
            index.extend(tokens[i:j])
            i = j
    assert compared > 100  # walks of several tokens were compared, not just empty ones


def brute_suffix_proposal(tokens, depth, k, params):
    """The longest suffix (<= depth - k, room for k tokens below it) that occurred followed by a token,
    then the most frequent continuation by brute-force counts while the prefix probability stays >=
    min_token_prob."""
    context = tokens[-max(1, depth - k):]
    m = 0
    for n in range(len(context), 0, -1):
        if brute_counts([tokens], context[len(context) - n:])[1] > 0:
            m = n
            break
    if m == 0:
        return [], []
    limit = min(k, int(params.max_spec_factor * m + params.max_spec_offset))
    path, out, p = context[len(context) - m:], [], 1.0
    probs = []
    while len(out) < limit and len(path) < depth:
        follow = brute_counts([tokens], path)[1]
        if follow == 0:
            break
        options = {t: brute_counts([tokens], path + [t])[0] for t in set(tokens)}
        # ties: the continuation first seen after this path (the trie keeps children in that order)
        firsts = [tokens[i + len(path)] for i in range(len(tokens) - len(path))
                  if tokens[i:i + len(path)] == path]
        best = max(dict.fromkeys(firsts), key=lambda t: options[t])
        p *= options[best] / follow
        if p < params.min_token_prob:
            break
        out.append(best)
        probs.append(p)
        path = path + [best]
    return out, probs


def test_suffix_proposal_matches_brute_force():
    rng = random.Random(2)
    params = SuffixParams(depth=8, max_spec_factor=2.0, min_token_prob=0.2, max_cached_requests=0)
    full = 0
    for i in range(300):
        tokens = [rng.randrange(3) for _ in range(rng.randrange(2, 40))]
        k = 1 + i % 5
        p = SuffixProposer(params)
        p.add("r", tokens)
        got = p.propose("r", k)
        want = brute_suffix_proposal(tokens, params.depth, k, params)
        assert got[0] == want[0], tokens
        assert got[1] == pytest.approx(want[1])
        full += k > 1 and len(got[0]) == k
    assert full > 20  # drafts of the whole k occur, not just one-token ones


def test_suffix_proposal_with_finished_outputs_matches_brute_force():
    """The request's walk against the global trie's (finished outputs): the one expecting more
    accepted tokens wins (the request's on a tie), each as brute-force counts give it."""
    rng = random.Random(5)
    params = SuffixParams(depth=7, max_spec_factor=2.0, min_token_prob=0.15, max_cached_requests=4)
    from_global = 0
    for i in range(150):
        p = SuffixProposer(params)
        outputs = []
        for j in range(rng.randrange(1, 5)):
            p.add(f"old{j}", [rng.randrange(3)])
            out = [rng.randrange(3) for _ in range(rng.randrange(1, 25))]
            p.extend(f"old{j}", out)
            p.release(f"old{j}")
            outputs.append(out)
        tokens = [rng.randrange(3) for _ in range(rng.randrange(2, 30))]
        k = 1 + i % 5
        p.add("r", tokens)
        own = brute_suffix_proposal(tokens, params.depth, k, params)
        glob = brute_global_proposal(outputs, tokens, params.depth, k, params)
        want = glob if sum(glob[1]) > sum(own[1]) else own
        got = p.propose("r", k)
        assert got[0] == want[0], (outputs, tokens, k)
        assert got[1] == pytest.approx(want[1])
        from_global += want is glob and len(glob[0]) > 0
    assert from_global > 10


def brute_global_proposal(seqs, tokens, depth, k, params):
    """As brute_suffix_proposal, over the finished outputs `seqs`, matching the request's suffix."""
    context = tokens[-max(1, depth - k):]
    m = 0
    for n in range(min(len(context), depth - 1), 0, -1):
        if brute_counts(seqs, context[len(context) - n:])[1] > 0:
            m = n
            break
    if m == 0:
        return [], []
    limit = min(k, int(params.max_spec_factor * m + params.max_spec_offset))
    path, out, probs, p = context[len(context) - m:], [], [], 1.0
    while len(out) < limit and len(path) < depth:
        follow = brute_counts(seqs, path)[1]
        if follow == 0:
            break
        firsts = [s[i + len(path)] for s in seqs for i in range(len(s) - len(path))
                  if s[i:i + len(path)] == path]
        options = {t: brute_counts(seqs, path + [t])[0] for t in firsts}
        best = max(dict.fromkeys(firsts), key=lambda t: options[t])
        p *= options[best] / follow
        if p < params.min_token_prob:
            break
        out.append(best)
        probs.append(p)
        path = path + [best]
    return out, probs


def test_suffix_copies_a_repeated_passage_and_learns_from_finished_outputs():
    passage = list(range(10, 40))
    p = SuffixProposer(SuffixParams())
    p.add("a", [1, 2] + passage + [3, 4] + passage[:6])
    assert p.propose("a", 8)[0] == passage[6:12]  # a match of 6 tokens earns a draft of 6
    # a second request whose output repeats what "a" produced: the global trie knows it
    p.extend("a", passage[6:])
    p.release("a")
    p.add("b", [7, 7, 7] + passage[6:10])
    assert p.propose("b", 4)[0] == passage[10:14]


def test_global_trie_keeps_its_memory_cap_and_lru():
    cap_mib = 0.5  # about 2,600 nodes: a few outputs of 50 tokens at depth 8
    params = SuffixParams(depth=8, cache_mib=cap_mib, max_cached_requests=1000)
    p = SuffixProposer(params)
    rng = random.Random(3)
    for i in range(60):
        p.add(f"r{i}", [1])
        p.extend(f"r{i}", [rng.randrange(1000) for _ in range(50)])
        p.release(f"r{i}")
        assert p.global_bytes() <= cap_mib * 2**20
    assert 0 < len(p.cached) < 60
    assert list(p.cached)[-1] == "r59"  # the oldest left first
    small = SuffixProposer(SuffixParams(max_cached_requests=2))
    for i in range(5):
        small.add(str(i), [0])
        small.extend(str(i), [i, i + 1])
        small.release(str(i))
    assert list(small.cached) == ["3", "4"]


def test_node_bytes_estimate_is_not_below_the_measured_footprint():
    rng = random.Random(4)
    tokens = [rng.randrange(50_000) for _ in range(2000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    trie = SuffixTrie(8)
    trie.insert(tokens)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / trie.num_nodes <= NODE_BYTES


def test_model_free_worker_ragged_lengths_and_bookkeeping():
    worker = ModelFreeDraftWorker(make_proposer("ngram"))
    params = SamplingParams(temperature=0.0)
    assert worker.add([NewRequest("a", [1, 2, 3, 4, 1, 2], params, 0), NewRequest("b", [9, 8], params, 0)]) == 2
    with pytest.raises(ValueError, match="request_id"):
        worker.add([NewRequest("a", [1], params, 0)])
    prop = worker.propose(["a", "b"], 4, {"a": [3], "b": [7]})
    # a: suffix 1 2 3 occurred at the start, followed by 4 1 2 3; b: 9 8 7 has no earlier 2-gram
    assert prop.lengths == [4, 0] and prop.probs is None
    assert prop.tokens.tolist() == [[4, 1, 2, 3], [0, 0, 0, 0]]
    assert prop.confidence.tolist() == [[1.0] * 4, [0.0] * 4] == prop.top_prob.tolist()
    worker.release(["a", "b", "zz"])
    assert not worker.book.states
    small = ModelFreeDraftWorker(make_proposer("suffix"), max_rows=2)
    assert small.add([NewRequest(str(i), [1, 2], params, 0) for i in range(3)]) == 2  # rows its channel holds
    small.release(["0"])
    assert small.add([NewRequest("2", [1, 2], params, 0)]) == 1
    with pytest.raises(KeyError):
        worker.propose(["a"], 2, {})
