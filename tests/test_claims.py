import numpy as np
import pandas as pd
import pytest

from medrek.evaluate.claims import CLAIMS, Comparison, Side, claim_table, paired_difference, verdict
from medrek.figures.tables import best_mask, claims_markdown, to_markdown


def _per_record(values: dict[tuple[str, str, int], dict[str, list[float]]]) -> pd.DataFrame:
    frames = []
    for (method, protocol, batch), metrics in values.items():
        n = len(next(iter(metrics.values())))
        frames.append(pd.DataFrame({"record_id": [str(i) for i in range(n)], "method": method, "protocol": protocol,
                                    "batch_size": batch, "eval_at": batch, **metrics}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("low,high,better,margin,expected", [
    (0.01, 0.05, "higher", 0.0, "holds"),
    (-0.05, -0.01, "higher", 0.0, "does not hold"),
    (-0.01, 0.05, "higher", 0.0, "undecided"),
    (0.0, 0.0, "higher", 0.0, "undecided"),  # touching 0 is not "above"
    (-0.05, -0.01, "lower", 0.0, "holds"),
    (0.01, 0.05, "lower", 0.0, "does not hold"),
    (-0.015, -0.005, "higher", 0.02, "holds"),  # a fall smaller than the margin
    (-0.05, -0.03, "higher", 0.02, "does not hold"),
    (-0.03, -0.01, "higher", 0.02, "undecided"),
])
def test_verdict(low, high, better, margin, expected):
    assert verdict(low, high, better, margin) == expected


def test_paired_difference_pairs_by_record_and_its_interval_covers_the_mean():
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.5, 0.1, 300), index=[str(i) for i in range(300)])
    b = pd.Series(a.to_numpy() - 0.05 + rng.normal(0, 0.01, 300), index=a.index)[::-1]  # another order
    diff, low, high, n = paired_difference(a, b, seed=1)
    assert n == 300 and diff == pytest.approx(0.05, abs=0.003)
    assert low < diff < high and high - low < 0.01  # paired: the shared noise cancels
    assert paired_difference(a, b, seed=1) == (diff, low, high, n)  # seeded


def test_paired_difference_without_spread_and_without_overlap():
    a = pd.Series([1.0, 1.0], index=["x", "y"])
    assert paired_difference(a, a, seed=0) == (0.0, 0.0, 0.0, 2)
    assert paired_difference(a, pd.Series([1.0], index=["z"]), seed=0)[3] == 0


def test_claim_table_verdicts_and_missing_results():
    n = 60
    rng = np.random.default_rng(3)
    good, bad = rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.3, n)
    values = {
        ("medrek", "single", 1): {"efficacy": good, "generality": good, "locality": np.ones(n)},
        ("recipe", "single", 1): {"efficacy": bad, "generality": bad, "locality": np.ones(n)},
        ("medrek-lm-embedding", "single", 1): {"efficacy": bad, "generality": bad, "locality": np.ones(n)},
        ("recipe-lm-embedding", "single", 1): {"efficacy": good, "generality": good, "locality": np.ones(n)},
    }
    comps = [Comparison("C1", "efficacy", Side("medrek", "single", 1), Side("recipe", "single", 1)),
             Comparison("C1", "generality", Side("medrek", "batch", 100), Side("recipe", "batch", 100))]
    table = claim_table(_per_record(values), claims=comps, seed=0)
    got = dict(zip(zip(table["comparison"], table["pair"]), table["verdict"]))
    assert got == {(0, "paper-faithful"): "holds", (0, "working"): "does not hold",
                   (1, "paper-faithful"): "missing", (1, "working"): "missing"}
    row = table.iloc[0]
    assert row["mean_a"] - row["mean_b"] == pytest.approx(row["difference"]) and row["n"] == n
    text = claims_markdown(table)
    assert "**holds**" in text and "**does not hold**" in text and text.count("\n") == 2 + len(comps)


def test_claim_table_reads_growth_for_stored_sizes():
    n = 20
    per = _per_record({("medrek", "single", 1): {"efficacy": np.ones(n), "generality": np.ones(n),
                                                 "locality": np.ones(n)}})
    growth = pd.DataFrame({"record_id": [str(i) for i in range(n)], "method": "medrek", "stored": 1000,
                           "efficacy": 1.0, "generality": 1.0, "locality": [0.0] * 10 + [1.0] * 10})
    comp = Comparison("C3", "locality", Side("medrek", "growth", 1000), Side("medrek", "single", 1), margin=0.02)
    table = claim_table(per, growth, claims=[comp], pairs={"paper-faithful": {"medrek": "medrek"}}, seed=0)
    assert table["difference"].iloc[0] == pytest.approx(-0.5) and table["verdict"].iloc[0] == "does not hold"


def test_every_claim_is_tested():
    assert {c.claim for c in CLAIMS} == {"C1", "C2", "C3", "C4", "C5"}


def test_best_marks_use_the_rounded_values_and_skip_unedited_locality():
    table = pd.DataFrame({"efficacy": [60.24, 60.16, 10.0], "locality": [99.0, 98.0, 100.0]},
                         index=pd.Index(["medrek", "recipe", "unedited"], name="method"))
    best = best_mask(table, digits=1)
    assert best["efficacy"].tolist() == [True, True, False]  # 60.2 and 60.2: a tie as shown
    assert best["locality"].tolist() == [True, False, False]  # the unedited 100.0 holds by definition
    text = to_markdown(table)
    assert "**60.2**" in text and "| unedited | 10.0 | 100.0 |" in text


def test_a_comparison_may_read_another_metric_on_b_and_pairs_only_where_a_has_a_value():
    per_record = _per_record({("m", "single", 1): {"locality": [1.0, 1.0, 1.0, 1.0]}})
    growth = pd.DataFrame({"record_id": ["0", "1", "2", "3"], "method": "m", "stored": 1000,
                           "locality/distinct": [1.0, 0.5, np.nan, 1.0]})  # record 2 asks a stored question
    comp = Comparison("C3", "locality/distinct", Side("m", "growth", 1000), Side("m", "single", 1), margin=0.02,
                      metric_b="locality")
    row = claim_table(per_record, growth, [comp], {"p": {}}, seed=0).iloc[0]
    assert row["n"] == 3 and row["difference"] == pytest.approx(-0.5 / 3) and row["metric_b"] == "locality"
    assert "locality/distinct vs locality" in claims_markdown(claim_table(per_record, growth, [comp], {"p": {}}))
