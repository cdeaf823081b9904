"""gateway/draft_policy.py: which kind of draft node drafts a request in a mixed pool."""

from gateway.draft_policy import MIN_OWN_VERIFIES, OPTIMISTIC, KindPolicy


def feed(policy, rid, kind, tokens_per_verify, verifies):
    for _ in range(verifies):
        policy.proposed(rid, kind)
        policy.committed(rid, tokens_per_verify)


def test_new_requests_spread_until_a_kind_proves_better():
    p = KindPolicy()
    assert p.prior("ngram") == p.prior("model") == OPTIMISTIC
    assert p.place(["model", "ngram"], {"model": 3, "ngram": 1}) == "ngram"  # tie: the less loaded
    feed(p, "a", "ngram", 4, 20)  # copies pay
    feed(p, "b", "model", 2, 20)
    assert p.place(["model", "ngram"], {"model": 0, "ngram": 9}) == "ngram"


def test_a_request_moves_when_another_kind_pays_clearly_more_and_not_back_and_forth():
    p = KindPolicy()
    feed(p, "others", "ngram", 4, 40)
    feed(p, "r", "model", 1, MIN_OWN_VERIFIES - 1)
    assert p.choose("r", "model", ["model", "ngram"]) == "model"  # too few of its own verifies yet
    feed(p, "r", "model", 1, 1)
    assert p.choose("r", "model", ["model", "ngram"]) == "ngram"
    # on ngram it does about as well as the prior says: it stays, and its poor model record keeps it away
    feed(p, "r", "ngram", 4, 10)
    assert p.choose("r", "ngram", ["model", "ngram"]) == "ngram"
    assert p.switches == 1


def test_a_small_difference_does_not_move_it():
    p = KindPolicy()
    feed(p, "others", "suffix", 3, 40)
    feed(p, "r", "model", 3, 10)  # 3.0 against the suffix prior of 3.0
    assert p.choose("r", "model", ["model", "suffix"]) == "model"
    assert p.choose("r", "model", ["model"]) == "model"  # one kind: nothing to choose


def test_discarded_proposals_and_first_tokens_are_not_counted():
    p = KindPolicy()
    p.committed("r", 1)  # the prefill's first token: no proposal was pending
    p.proposed("r", "ngram")
    p.committed("r", 0)  # discarded proposal: no verify
    assert "ngram" not in p.totals
    p.forget("r")
    assert "r" not in p.own and "r" not in p.pending


def test_target_only_steps_after_an_empty_draft_count_as_verifies_of_one_token():
    p = KindPolicy()
    p.proposed("r", "ngram")
    p.drafted("r", 0)  # nothing matched; its batch then went unsent for 7 steps (spec/dry_rows.py)
    p.committed("r", 8)
    assert p.own["r"]["ngram"] == [8.0, 8.0]  # 1 token per step, not 8 per verify
    p.proposed("r", "ngram")
    p.drafted("r", 3)
    p.committed("r", 4)  # the whole draft accepted and the bonus token: one verify
    assert p.own["r"]["ngram"] == [12.0, 9.0]
