"""minedraft/spec/dry_rows.py: rows that keep getting no draft wait out a doubling number of their
batch's proposal decisions, and any drafted token makes them ordinary again."""

from minedraft.spec.dry_rows import DryRows


def calls_over(dry: DryRows, ids, decisions: int, answer) -> list[int]:
    """The decisions at which a proposal was sent; answer(i) -> the lengths the proposer returns."""
    sent = []
    for i in range(decisions):
        if not dry.skip(ids):
            sent.append(i)
            dry.observe(ids, answer(i))
    return sent


def test_a_dry_batch_is_sent_at_doubling_intervals_up_to_the_cap():
    dry = DryRows(misses=2, max_wait=8)
    sent = calls_over(dry, ["a", "b"], 60, lambda i: [0, 0])
    assert sent[:7] == [0, 1, 3, 6, 11, 20, 29]  # waits 1, 2, 4, 8, then 8 (the cap)
    assert len(sent) <= 10


def test_one_row_with_a_draft_keeps_its_batch_sent_and_a_draft_resets_a_row():
    dry = DryRows(misses=2, max_wait=32)
    assert calls_over(dry, ["a", "b"], 20, lambda i: [0, 1]) == list(range(20))
    assert "b" not in dry.rows and dry.rows["a"][1] > 0  # a waits, b never does
    dry = DryRows(misses=2, max_wait=32)
    sent = calls_over(dry, ["a"], 40, lambda i: [0] if i < 10 else [2])
    assert sent[-5:] == list(range(35, 40)) and not dry.rows  # found a draft again: every decision


def test_a_draft_model_rows_never_wait_and_forget_drops_rows():
    dry = DryRows()
    assert calls_over(dry, ["a"], 10, lambda i: None) == list(range(10))
    calls_over(dry, ["b"], 10, lambda i: [0])
    assert dry.waiting() == 1
    dry.forget(["b"])
    assert not dry.rows and not dry.skip([])
