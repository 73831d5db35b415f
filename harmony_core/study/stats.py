"""Statistics of the blind study: win shares, Wilson intervals, Bradley-Terry, tests.

How votes become comparisons: a best-of-n vote for W among the shown methods S counts as
"W beats L" for every other L in S (n - 1 comparisons); a pairwise vote is one comparison;
"can't decide" gives none (it is counted, and excluded from shares and scores). When every
vote shows the same set of methods, the Bradley-Terry fit of these comparisons recovers exactly
the strengths of Luce's choice model (P(choose i) = s_i / sum s), so the scores are the
log-strengths of that model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

Z95 = 1.959963984540054
PROVISIONAL_BELOW = 30
"""Fewer decided votes showing a method than this and its row carries a provisional badge."""


def wilson_interval(wins: np.ndarray | int, n: np.ndarray | int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion: sane at 0 and n, unlike the Wald interval."""
    wins, n = np.asarray(wins, float), np.asarray(n, float)
    safe = np.maximum(n, 1.0)
    p = wins / safe
    centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / (1 + z * z / safe)
    lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return np.where(n > 0, lo, 0.0), np.where(n > 0, hi, 1.0)


def decided(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes with a winner (not "can't decide")."""
    return votes[votes["winner_method"].astype(str) != ""]


def shown_lists(votes: pd.DataFrame) -> list[list[str]]:
    return [str(s).split(";") for s in votes["shown_order"]]


def methods_of(votes: pd.DataFrame) -> list[str]:
    """Every method shown in any vote, sorted."""
    return sorted({m for shown in shown_lists(votes) for m in shown})


def comparisons(votes: pd.DataFrame) -> pd.DataFrame:
    """One row (winner, loser, rater_id) per pairwise comparison implied by the decided votes."""
    rows = [
        (winner, loser, rater)
        for winner, shown, rater in zip(decided(votes)["winner_method"], shown_lists(decided(votes)), decided(votes)["rater_id"])
        for loser in shown if loser != winner
    ]
    return pd.DataFrame(rows, columns=["winner", "loser", "rater_id"])


def win_matrix(pairs: pd.DataFrame, methods: list[str]) -> np.ndarray:
    """wins[i, j] = how often methods[i] beat methods[j]."""
    index = {m: i for i, m in enumerate(methods)}
    wins = np.zeros((len(methods), len(methods)))
    np.add.at(wins, (pairs["winner"].map(index).to_numpy(int), pairs["loser"].map(index).to_numpy(int)), 1)
    return wins


def bradley_terry(wins: np.ndarray, prior: float = 0.1, iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) by Hunter's MM algorithm.

    `prior` pseudo-wins each way on every pair keep a method that never won finite and join
    methods never compared directly; with a few hundred votes its pull is negligible.
    """
    k = wins.shape[0]
    w = wins + prior * (1 - np.eye(k))
    games = w + w.T
    total_wins = w.sum(axis=1)
    p = np.ones(k)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return np.log(p)


def bootstrap_bradley_terry(pairs: pd.DataFrame, methods: list[str], n_boot: int = 500,
                            seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the scores, resampling raters (not votes): a rater's votes are
    correlated, so resampling votes would understate the uncertainty."""
    raters = sorted(pairs["rater_id"].unique())
    if len(raters) == 0:
        return np.full(len(methods), np.nan), np.full(len(methods), np.nan)
    per_rater = np.stack([win_matrix(pairs[pairs["rater_id"] == r], methods) for r in raters])
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, len(methods)))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, len(raters), len(raters)), minlength=len(raters))
        draws[b] = bradley_terry(np.tensordot(counts, per_rater, axes=1))
    alpha = (1 - level) / 2
    return np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0)


def win_rates(wins: np.ndarray) -> np.ndarray:
    """rate[i, j] = share of i-vs-j comparisons that i won; NaN where never compared."""
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins / games, np.nan)
    np.fill_diagonal(rate, np.nan)
    return rate


@dataclass
class Leaderboard:
    table: pd.DataFrame
    """One row per method, best first."""
    methods: list[str]
    rates: np.ndarray
    headline: str
    votes: int
    raters: int


def leaderboard(votes: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> Leaderboard:
    """Everything the Leaderboard tab shows, from the raw votes."""
    methods = methods_of(votes)
    raters = votes["rater_id"].nunique()
    if not methods:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        return Leaderboard(empty, [], np.zeros((0, 0)), "No votes yet.", 0, 0)
    chosen = decided(votes)
    shown = shown_lists(chosen)
    appearances = np.array([sum(m in s for s in shown) for m in methods])
    wins_total = np.array([(chosen["winner_method"] == m).sum() for m in methods])
    expected = np.array([sum(1 / len(s) for s in shown if m in s) for m in methods])
    lo, hi = wilson_interval(wins_total, appearances)
    pairs = comparisons(votes)
    wins = win_matrix(pairs, methods)
    score = bradley_terry(wins)
    bt_lo, bt_hi = bootstrap_bradley_terry(pairs, methods, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(appearances > 0, wins_total / np.maximum(appearances, 1), np.nan)
    table = pd.DataFrame({
        "method": methods,
        "shown": appearances,
        "wins": wins_total,
        "win share %": np.round(100 * share, 1),
        "Wilson 95% CI %": [f"{100 * a:.1f} – {100 * b:.1f}" for a, b in zip(lo, hi)],
        "chance %": np.round(100 * expected / np.maximum(appearances, 1), 1),
        "BT score": np.round(score, 3),
        "BT 95% CI": [f"{a:.2f} – {b:.2f}" for a, b in zip(bt_lo, bt_hi)],
        "badge": ["provisional" if n < PROVISIONAL_BELOW else "" for n in appearances],
    }).sort_values("BT score", ascending=False, kind="stable").reset_index(drop=True)
    return Leaderboard(table, methods, win_rates(wins), _headline(votes, methods, wins_total, appearances, expected), len(votes), raters)


TABLE_COLUMNS = ["method", "shown", "wins", "win share %", "Wilson 95% CI %", "chance %", "BT score", "BT 95% CI", "badge"]


def _headline(votes: pd.DataFrame, methods: list[str], wins: np.ndarray, shown: np.ndarray, expected: np.ndarray) -> str:
    """'X% of N votes from M raters preferred Y' for the most-chosen method, with its test."""
    undecided = int((votes["winner_method"].astype(str) == "").sum())
    tail = f" ({undecided} more were \"can't decide\".)" if undecided else ""
    if wins.sum() == 0:
        return "No decided votes yet." + tail
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(shown > 0, wins / np.maximum(shown, 1), -1)
    best = int(np.argmax(share))
    name, n = methods[best], int(shown[best])
    chance = expected[best] / n
    chosen = decided(votes)
    raters = chosen[[methods[best] in s for s in shown_lists(chosen)]]["rater_id"].nunique()
    p_binom = sps.binomtest(int(wins[best]), n, chance).pvalue
    text = (
        f"**{100 * wins[best] / n:.0f}% of {n} votes from {raters} rater{'s' if raters != 1 else ''} preferred "
        f"{name}** (chance: {100 * chance:.0f}%; two-sided binomial p = {p_binom:.2g})."
    )
    compared = shown > 0
    if compared.sum() >= 2:
        chi = sps.chisquare(wins[compared], expected[compared])
        text += f" All methods equally preferred? Chi-square p = {chi.pvalue:.2g}."
    return text + tail
