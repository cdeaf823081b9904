"""A long-running gateway keeps a bounded number of step records; the sums stay exact."""

from minedraft.spec.metrics import SpecDecodeMetrics, StepRecord, sum_steps


def test_old_steps_fold_into_sums():
    m = SpecDecodeMetrics(k=4)
    m.MAX_KEPT_STEPS = 10
    records = [StepRecord("psd", 0.01 * i, draft_s=0.001 * i, channel_bytes=i) for i in range(1, 38)]
    for r in records:
        m.add_step(r)
    assert len(m.steps) <= 10 and m.total_steps == 37
    expected = sum_steps(records)
    got = m.breakdown()
    assert got["num_steps"] == 37 and got["channel_bytes"] == expected["channel_bytes"]
    for name in ("wall_s", "draft_compute_s"):
        assert abs(got[name] - expected[name]) < 1e-9
