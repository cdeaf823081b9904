"""Automatic prefix caching: the block manager's hash chain, sharing, LRU and copy-on-write; a
shared block's K/V never change under another owner's rollback, preemption or abort; and the
Engine's outputs are the same with caching on and off (greedy and seeded, ar/sd/psd, under a KV
budget small enough to evict and preempt)."""

import pytest
import torch

from minedraft import Engine, SamplingParams
from minedraft.assets import default_target_path
from minedraft.runner.block_manager import BlockManager, NoRoom
from minedraft.runner.model_runner import ModelRunner

BS = 4


def written(bm: BlockManager, tokens: list[int], committed: int | None = None) -> int:
    """A sequence that wrote `tokens` and committed the first `committed` of them (all by default)."""
    seq = bm.new_sequence(tokens[:committed] if committed is not None else tokens)
    bm.reserve({seq: len(tokens)})
    bm.advance(seq, len(tokens) - bm.lengths[seq])
    return seq


def test_full_committed_blocks_are_shared_and_counted():
    bm = BlockManager(32, BS)
    a = written(bm, list(range(10)))  # blocks [0..3] [4..7] full, [8, 9] partial
    b = bm.new_sequence(list(range(10)) + [77])
    assert bm.tables[b] == bm.tables[a][:2] and bm.lengths[b] == 8  # the partial block is never shared
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (10 + 11, 8)
    # the last committed token is always computed again: 8 tokens share only the first block
    c = bm.new_sequence(list(range(8)))
    assert bm.tables[c] == bm.tables[a][:1] and bm.lengths[c] == 4
    # a different first block: nothing, even though later tokens agree (the chain hashes the parent)
    d = bm.new_sequence([99] + list(range(1, 10)))
    assert bm.lengths[d] == 0


def test_drafted_tokens_are_never_sealed():
    bm = BlockManager(32, BS)
    a = written(bm, list(range(12)), committed=5)  # 7 drafted tokens written for a verify
    assert bm.new_sequence(list(range(12)) + [1]) and bm.prefix_cache_hits == 4  # only block 0 is all committed
    bm.truncate(a, 6)  # rejected drafts rolled back; the target's token commits
    bm.commit(a, [5, 6, 7])
    bm.reserve({a: 8})
    bm.advance(a, 2)
    assert bm.lengths[bm.new_sequence(list(range(12)))] == 8


def test_freed_blocks_stay_cached_until_evicted_tail_first():
    bm = BlockManager(7, BS)  # 6 usable
    a = written(bm, list(range(12)))  # 3 full blocks
    bm.free(a)
    assert bm.num_free == 6 and bm.num_cached == 3  # cached blocks count as free
    hit = bm.new_sequence(list(range(12)) + [5])
    assert bm.lengths[hit] == 12
    bm.free(hit)
    # a stranger needs 4 blocks: the 3 never-used ones, then the LRU's oldest: a's tail block
    other = written(bm, [50 + i for i in range(16)])
    assert bm.num_cached == 2 + 4
    again = bm.new_sequence(list(range(12)) + [5])
    assert bm.lengths[again] == 8
    bm.free(other)
    bm.free(again)
    # a tiny budget: everything evicts, nothing breaks
    for n in range(5):
        bm.free(written(bm, [200 + 20 * n + i for i in range(20)]))
    assert bm.num_free == 6


def test_prefix_plan_counts_only_blocks_really_needed():
    bm = BlockManager(32, BS)
    a = written(bm, list(range(12)))
    shared = list(range(12)) + [1, 2]
    fresh = [60 + i for i in range(10)]
    plan = bm.prefix_plan([shared, fresh, fresh + [3]])
    # shared: 4 blocks, 3 of them held by a; fresh: 3; the third shares fresh's 2 full blocks once written
    assert plan == [(1, False), (3, False), (1, True)]
    bm.free(a)  # now a's blocks are in the LRU: using them takes them out of the free count
    assert bm.prefix_plan([shared, shared])[0] == (4, False)
    assert bm.prefix_plan([shared, shared])[1] == (1, False)


def test_rollback_into_a_shared_block_copies_it_first():
    bm = BlockManager(32, BS)
    a = written(bm, list(range(8)))
    b = written(bm, list(range(8)) + [9])  # shares a's first block, then owns [4..7] + [9]
    bm.free(b)
    c = written(bm, list(range(9)))  # shares a's two full blocks
    assert bm.tables[c][:2] == bm.tables[a]
    bm.truncate(c, 7)  # the draft's rollback to its pending token: inside the shared block
    assert bm.extra_blocks(c, 8) == 1
    copies = bm.reserve({c: 8})
    assert copies == [(bm.tables[a][1], bm.tables[c][1])] and bm.tables[c][1] != bm.tables[a][1]
    bm.truncate(a, 7)  # a alone holds its block now: written in place, unregistered
    assert bm.reserve({a: 8}) == [] and bm.lengths[bm.new_sequence(list(range(9)))] == 4
    with pytest.raises(NoRoom):
        bm.reserve({a: 4 * 40})


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(default_target_path(), num_kv_blocks=64, block_size=BS, max_model_len=128)


def block_kv(runner, block):
    s = slice(block * BS, (block + 1) * BS)
    return [t[s].clone() for t in runner.cache.k + runner.cache.v]


def test_shared_block_never_changes_under_one_owners_rollback_preemption_or_abort(runner):
    prompt = [1] + [(7 * j) % 300 + 5 for j in range(15)]  # 4 full blocks
    a = runner.allocate(prompt)
    runner.forward([a], [prompt])
    runner.commit(a, [42])
    b = runner.allocate(prompt + [42, 43])
    assert runner.length(b) == 16
    shared = runner.blocks.tables[b][:4]
    before = [block_kv(runner, blk) for blk in shared]
    # b drafts past the shared blocks, is rolled back into them, rewrites and is aborted
    runner.forward([b], [[42, 43, 7, 8, 9]])
    runner.rollback(b, 15)
    runner.forward([b], [[123, 124]])
    assert runner.blocks.tables[b][3] != shared[3]  # its write went to a private copy
    runner.free(b)  # abort / preemption of one owner
    c = runner.allocate(prompt + [42, 1])
    runner.forward([c], [[42]])
    runner.free(c)
    assert all(torch.equal(x, y) for blk, old in zip(shared, before) for x, y in zip(block_kv(runner, blk), old))
    assert runner.blocks.tables[a] [:4] == shared
    runner.free(a)


def chat_prompts():
    system = [1] + [(13 * j) % 400 + 7 for j in range(40)]
    return [system + [(5 * i + 3 * j) % 90 + 11 for j in range(3 + i % 4)] for i in range(7)]


def run(mode, caching, params, **kw):
    engine = Engine(mode=mode, num_speculative_tokens=3, enable_prefix_caching=caching, max_num_seqs=5, **kw)
    first = engine.generate(chat_prompts()[:2], params)  # a conversation's turn, then the rest
    rest = engine.generate(chat_prompts(), params)
    return [r.token_ids for r in first + rest], engine


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_outputs_equal_with_caching_on_and_off(mode):
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=5, max_tokens=20, ignore_eos=True)
    reference, _ = run("ar", False, greedy)
    for params in (greedy, seeded):
        # 12 blocks of 16: not every request fits at once, freed blocks get evicted, and with caching
        # (which admits more) a request is preempted and resumes from its cached blocks
        on, engine = run(mode, True, params, num_kv_blocks=12)
        off, _ = run(mode, False, params, num_kv_blocks=12)
        assert on == off
        assert engine.metrics.num_preemptions >= 1
        if params is greedy:
            assert on == reference
        runners = [engine.target_runner] + ([engine.draft_runner] if mode != "ar" else [])
        for r in runners:
            assert r.blocks.prefix_cache_hits >= 32 * 6  # the 41-token system prompt's 2 blocks, mostly
            assert r.blocks.num_free == r.blocks.num_usable  # nothing leaked
