"""Study statistics checked on synthetic votes drawn from known strengths."""

import numpy as np
import pandas as pd
import pytest

from harmony_core.arena import stats

METHODS = ["composite", "histogram", "poisson", "reinhard"]
TRUE_LOG = np.array([-0.6, -0.2, 0.6, 0.2])  # Luce choice strengths, mean 0


def synthetic_votes(n_raters: int, per_rater: int, seed: int, mode: str = "best_of_n", undecided: float = 0.0) -> pd.DataFrame:
    """Votes from Luce's choice model: P(pick i among shown S) = exp(s_i) / sum_S exp(s_j)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_raters):
        for _ in range(per_rater):
            shown = list(rng.permutation(4)[: 2 if mode == "pairwise" else 4])
            weights = np.exp(TRUE_LOG[shown])
            pick = rng.choice(len(shown), p=weights / weights.sum())
            winner = "" if rng.random() < undecided else METHODS[shown[pick]]
            rows.append({"mode": mode, "shown_order": ";".join(METHODS[i] for i in shown),
                         "winner_method": winner, "rater_id": f"r{r}"})
    return pd.DataFrame(rows)


def test_wilson_matches_known_values():
    lo, hi = stats.wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert lo == pytest.approx([0.0, 0.2366, 0.7225], abs=1e-4)
    assert hi == pytest.approx([0.2775, 0.7634, 1.0], abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_is_the_closed_form_score_interval():
    """scipy's Wilson interval gives the same numbers as the textbook formula (no continuity correction)."""
    wins, n = np.array([0, 1, 3, 7, 10, 49, 50]), np.array([10, 10, 4, 50, 10, 50, 50])
    z, p = stats.Z95, wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = stats.wilson_interval(wins, n)
    np.testing.assert_allclose(lo, np.clip(centre - half, 0, 1), atol=1e-12)
    np.testing.assert_allclose(hi, np.clip(centre + half, 0, 1), atol=1e-12)


def test_wilson_covers_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    coverage = []
    for p in (0.1, 0.25, 0.5, 0.7):
        for n in (30, 100):
            k = rng.binomial(n, p, size=4000)
            lo, hi = stats.wilson_interval(k, np.full_like(k, n))
            coverage.append(np.mean((lo <= p) & (p <= hi)))
    assert 0.93 <= np.mean(coverage) <= 0.97
    assert min(coverage) >= 0.90


def test_best_of_n_votes_become_winner_beats_each_other_shown():
    votes = pd.DataFrame([
        {"mode": "best_of_n", "shown_order": "a;b;c", "winner_method": "b", "rater_id": "r1"},
        {"mode": "pairwise", "shown_order": "c;a", "winner_method": "a", "rater_id": "r2"},
        {"mode": "best_of_n", "shown_order": "a;b;c", "winner_method": "", "rater_id": "r2"},
    ])
    pairs = stats.comparisons(votes)
    assert sorted(zip(pairs["winner"], pairs["loser"])) == [("a", "c"), ("b", "a"), ("b", "c")]
    wins = stats.win_matrix(pairs, ["a", "b", "c"])
    assert wins.tolist() == [[0, 0, 1], [1, 0, 1], [0, 0, 0]]


@pytest.mark.parametrize("mode", ["best_of_n", "pairwise"])
def test_bradley_terry_recovers_the_strengths(mode):
    votes = synthetic_votes(40, 60, seed=2, mode=mode)
    pairs = stats.comparisons(votes)
    score = stats.bradley_terry(stats.win_matrix(pairs, METHODS))
    assert list(np.argsort(score)) == list(np.argsort(TRUE_LOG))
    assert score == pytest.approx(TRUE_LOG, abs=0.15)
    lo, hi = stats.bootstrap_bradley_terry(pairs, METHODS, n_boot=300, seed=0)
    assert np.all((lo <= TRUE_LOG) & (TRUE_LOG <= hi)), (lo, hi)
    assert np.all(hi - lo < 0.6)


def test_bootstrap_is_reproducible_and_resamples_raters():
    pairs = stats.comparisons(synthetic_votes(10, 20, seed=3))
    first = stats.bootstrap_bradley_terry(pairs, METHODS, n_boot=50, seed=0)
    again = stats.bootstrap_bradley_terry(pairs, METHODS, n_boot=50, seed=0)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    one_rater = stats.comparisons(synthetic_votes(1, 200, seed=4))
    lo, hi = stats.bootstrap_bradley_terry(one_rater, METHODS, n_boot=50)
    assert np.allclose(lo, hi)  # one rater: every resample is the same data


def test_leaderboard_table_headline_and_badges():
    votes = synthetic_votes(12, 10, seed=5, undecided=0.1)
    board = stats.leaderboard(votes, n_boot=100)
    table = board.table.set_index("method")
    assert board.table["method"].iloc[0] == "poisson"
    assert list(board.table.columns) == stats.TABLE_COLUMNS
    assert table["shown"].sum() == 4 * (votes["winner_method"] != "").sum()
    assert set(table["badge"]) == {""}  # about 108 decided votes showed each method
    assert "showed poisson preferred it" in board.headline and "from 12 sources (12 rater ids)" in board.headline
    assert "test over sources: p =" in board.headline and "Chi-square" in board.headline and "can't decide" in board.headline
    few = stats.leaderboard(synthetic_votes(2, 5, seed=6), n_boot=20)
    assert set(few.table["badge"]) == {"provisional"}
    assert np.isnan(board.rates[0, 0]) and board.rates[2, 0] > 0.5  # poisson beats composite


def test_headline_p_value_is_a_test_over_sources():
    votes = pd.DataFrame([{"mode": "pairwise", "shown_order": "a;b", "winner_method": "a" if i < 15 else "b",
                           "rater_id": f"r{i}"} for i in range(20)])
    board = stats.leaderboard(votes, n_boot=20)
    assert board.headline.startswith("**75% of the 20 votes that showed a preferred it** (chance: 50%), from 20 sources")
    # one vote per source: excess +-0.5, t = 5 / sqrt(20/19 * 5) = 2.18 on 19 df (binomial: 0.041)
    assert "p = 0.042" in board.headline
    few = stats.leaderboard(votes.assign(rater_id=[f"r{i % 3}" for i in range(20)]), n_boot=20)
    assert "too few sources for a test" in few.headline and "p =" not in few.headline


def test_no_votes():
    empty = pd.DataFrame(columns=["mode", "shown_order", "winner_method", "rater_id"])
    assert stats.leaderboard(empty).headline == "No votes yet."


def tie_votes(good: int, bad: int, a_wins: int) -> pd.DataFrame:
    rows = [{"mode": "pairwise", "shown_order": "a;b", "winner_method": "a", "rater_id": "r1", "flags": "seed=1"}] * a_wins
    rows += [{"mode": "pairwise", "shown_order": "a;b", "winner_method": "", "rater_id": "r2",
              "flags": "seed=2;tie=both_good"}] * good
    rows += [{"mode": "pairwise", "shown_order": "b;a", "winner_method": "", "rater_id": "r3",
              "flags": "seed=3;tie=both_bad"}] * bad
    return pd.DataFrame(rows)


def test_ties_count_as_half_a_win_each_way():
    votes = tie_votes(good=2, bad=2, a_wins=4)
    wins = stats.win_matrix(stats.comparisons(votes), ["a", "b"])
    assert wins.tolist() == [[0.0, 6.0], [2.0, 0.0]]  # a over b: 4 + 4 halves; b over a: 4 halves
    board = stats.leaderboard(votes, n_boot=20)
    table = board.table.set_index("method")
    assert table.loc["a", "shown"] == 8 and table.loc["a", "wins"] == 6 and table.loc["b", "wins"] == 2
    assert table.loc["a", "win share %"] == 75.0
    assert "4 tie(s)" in board.headline and '2 "both good", 2 "both bad"' in board.headline
    assert "can't decide" not in board.headline  # ties are not undecided votes
    assert stats.tie_kind("seed=1;tie=both_bad") == "both_bad" and stats.tie_kind("tie=maybe") == ""


def test_ranks_tie_where_intervals_overlap():
    lo, hi = np.array([1.0, 0.5, -2.0]), np.array([2.0, 1.5, -1.0])
    assert stats.rank_ranges(lo, hi) == ["1-2", "1-2", "3"]
    assert stats.rank_ranges(np.array([np.nan]), np.array([np.nan])) == [""]


def test_votes_to_separate_at_the_current_rate():
    wins = np.array([[0.0, 6.0], [4.0, 0.0]])  # p = 0.6 after 10: 1.96^2 * 0.24 / 0.01 = 92.2 in all
    more = stats.votes_to_separate(wins)
    assert more[0, 1] == 83 and more[1, 0] == 83
    assert stats.votes_to_separate(np.array([[0.0, 30.0], [0.0, 0.0]]))[0, 1] == 0  # already apart
    assert np.isinf(stats.votes_to_separate(np.array([[0.0, 5.0], [5.0, 0.0]]))[0, 1])  # even: never
    table = stats.pair_table(["x", "y"], wins)
    assert table.iloc[0].tolist() == ["x vs y", 10.0, "60%", 83]
