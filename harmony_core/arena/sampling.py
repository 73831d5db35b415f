"""Which pair a pairwise round shows: the least-compared pair that is not yet settled.

A uniform choice keeps spending votes on pairs the board already separates (a clear winner over
a clear loser) while the close pairs wait. Choosing, among the pairs not yet settled, the one with
the fewest comparisons (ties broken at random) sends the votes where they still decide something.
A pair is settled when the pair table calls it separated after at least SETTLED_AFTER
comparisons: a pair separated by a fluke of its first few votes keeps getting votes until that
fluke would show. Only the counts so far steer it (never the rater's own picks), the order on
screen stays random, and the one-vote-per-sample rule is untouched, so blindness holds.
`simulate` measures what it saves against a uniform choice, with a known ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from harmony_core.arena import stats


def separated(wins: np.ndarray) -> np.ndarray:
    """done[i, j]: whether the pair table calls methods i and j separated (MIN_PAIR_COMPARISONS
    comparisons and a Wilson 95% interval of the win rate that excludes one half)."""
    games = wins + wins.T
    done = np.zeros(wins.shape, bool)
    for i, j in zip(*np.triu_indices(len(wins), 1)):
        if games[i, j] >= stats.MIN_PAIR_COMPARISONS:
            done[i, j] = done[j, i] = stats._wilson_excludes_half(max(wins[i, j], wins[j, i]), games[i, j])
    return done


SETTLED_AFTER = 50
"""Comparisons a separated pair needs before it stops getting votes (chosen in simulation: at
10, the pair table's own minimum, a close pair separated the wrong way by its first votes was
often left so; at 50 no simulated run was)."""


def informative_pair(candidates: Sequence[int], wins: np.ndarray, rng: random.Random) -> tuple[int, int]:
    """Of the pairs among `candidates` (indices into wins), the least-compared one not yet
    settled (all of them when every pair is), ties at random."""
    games, done = wins + wins.T, separated(wins)
    pairs = [(a, b) for n, a in enumerate(candidates) for b in candidates[n + 1:]]
    open_pairs = [p for p in pairs if not (done[p] and games[p] >= SETTLED_AFTER)] or pairs
    fewest = min(games[p] for p in open_pairs)
    return rng.choice([p for p in open_pairs if games[p] == fewest])


def simulate(strengths: Sequence[float], informative: bool, seed: int = 0,
             max_votes: int = 100_000) -> tuple[int, bool]:
    """(pairwise votes until every pair of methods is separated, whether every separated pair
    has the true leader ahead), votes drawn from the Bradley-Terry model with these log-strengths
    and pairs chosen uniformly or informatively; max_votes when that never happens."""
    rng, draw = random.Random(seed), np.random.default_rng(seed)
    strength = np.exp(np.asarray(strengths, float))
    k = len(strength)
    wins = np.zeros((k, k))
    for votes in range(1, max_votes + 1):
        a, b = informative_pair(list(range(k)), wins, rng) if informative else tuple(rng.sample(range(k), 2))
        winner, loser = (a, b) if draw.random() < strength[a] / (strength[a] + strength[b]) else (b, a)
        wins[winner, loser] += 1
        if votes % k == 0 and separated(wins)[np.triu_indices(k, 1)].all():
            break
    truth = strength[:, None] > strength[None, :]
    leads = wins > wins.T
    return votes, bool(np.all(leads[separated(wins)] == truth[separated(wins)]))


def compare(strengths: Sequence[float], runs: int = 20, max_votes: int = 100_000) -> dict[str, float]:
    """Median votes to separate every pair, and the share of runs that separated every pair the
    right way round, for uniform and informative pair choices over `runs` seeds."""
    result: dict[str, float] = {}
    for name, informative in (("uniform", False), ("informative", True)):
        outcomes = [simulate(strengths, informative, seed, max_votes) for seed in range(runs)]
        result[f"{name} votes"] = float(np.median([votes for votes, _ in outcomes]))
        result[f"{name} right %"] = 100 * float(np.mean([right for _, right in outcomes]))
    result["saved %"] = 100 * (1 - result["informative votes"] / result["uniform votes"])
    return result
