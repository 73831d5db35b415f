"""Statistics of the blind study: win shares, Wilson intervals, Bradley-Terry, tests.

How votes become comparisons: a best-of-n vote for W among the shown methods S counts as
"W beats L" for every other L in S (n - 1 comparisons); a pairwise vote is one comparison;
"can't decide" gives none (it is counted, and excluded from shares and scores).

Ties ("Both good" / "Both bad" in pairwise mode, stored as the flag `tie=both_good` or
`tie=both_bad`) count as half a win for each of the two methods (the "half wins" convention, as
in chess and the Chatbot Arena's Elo): half a comparison each way in the win matrix and the
Bradley-Terry fit, and half a win in the win share. The headline counts them apart; its
binomial test uses outright decisions only. When every
vote shows the same set of methods, the Bradley-Terry fit of these comparisons recovers exactly
the strengths of Luce's choice model (P(choose i) = s_i / sum s), so the scores are the
log-strengths of that model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps

Z95 = 1.959963984540054
PROVISIONAL_BELOW = 30
"""Fewer decided votes showing a method than this and its row carries a provisional badge."""
MIN_SOURCES = 5
"""Fewer distinct sources (IP hashes) than this and the board claims nothing: no score interval,
no certain rank, no significance test, no separated pair. Votes from one source are one cluster
(one person can hold many rater ids), so a handful of sources is a handful of opinions."""
MIN_PAIR_COMPARISONS = 10
"""A pair is called separated only after at least this many comparisons (and a Wilson interval of
the win rate that excludes one half, from at least MIN_SOURCES sources)."""


def wilson_interval(wins: np.ndarray | int, n: np.ndarray | int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (sane at 0 and n, unlike the Wald interval),
    from scipy's `binomtest(...).proportion_ci(method="wilson")`; (0, 1) where n is 0."""
    wins, n = np.broadcast_arrays(np.asarray(wins, float), np.asarray(n, float))
    level = 2.0 * sps.norm.cdf(z) - 1.0
    pairs = np.stack([wins.ravel(), n.ravel()], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)  # one scipy call per distinct (wins, n)
    bounds = np.array([(0.0, 1.0) if total <= 0 else
                       tuple(sps.binomtest(int(k), int(total)).proportion_ci(level, method="wilson"))
                       for k, total in unique]).reshape(-1, 2)
    lo, hi = (np.clip(bounds[inverse.ravel(), i], 0.0, 1.0).reshape(wins.shape) for i in (0, 1))
    return (lo[()], hi[()]) if lo.ndim == 0 else (lo, hi)


TIE_FLAG = "tie="
TIE_KINDS = ("both_good", "both_bad")


def tie_kind(flags: object) -> str:
    """"both_good" / "both_bad" for a tie vote's flags, "" otherwise."""
    for flag in str(flags or "").split(";"):
        if flag.startswith(TIE_FLAG) and flag[len(TIE_FLAG):] in TIE_KINDS:
            return flag[len(TIE_FLAG):]
    return ""


def ties_of(votes: pd.DataFrame) -> pd.Series:
    """Each vote's tie kind ("" for none); votes without a flags column have no ties."""
    if "flags" not in votes.columns:
        return pd.Series("", index=votes.index)
    return votes["flags"].map(tie_kind)


def decided(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes with a winner (not a tie, not "can't decide")."""
    return votes[votes["winner_method"].astype(str) != ""]


def shown_lists(votes: pd.DataFrame) -> list[list[str]]:
    return [str(s).split(";") for s in votes["shown_order"]]


def sources_of(votes: pd.DataFrame) -> pd.Series:
    """Each vote's source (votes.source_of, vectorized): its IP hash, else its rater id."""
    raters = "rater:" + votes["rater_id"].astype(str)
    if "ip_hash" not in votes.columns:
        return raters
    ips = votes["ip_hash"].fillna("").astype(str)
    return ("ip:" + ips).where(ips != "", raters)


def comparisons(votes: pd.DataFrame) -> pd.DataFrame:
    """One row (winner, loser, rater_id, source, weight) per pairwise comparison implied by the
    votes: weight 1 for a decided one, 0.5 each way for a tie."""
    votes = votes.assign(source=sources_of(votes))
    chosen = decided(votes)
    rows = [
        (winner, loser, rater, source, 1.0)
        for winner, shown, rater, source in zip(chosen["winner_method"], shown_lists(chosen), chosen["rater_id"],
                                                chosen["source"])
        for loser in shown if loser != winner
    ]
    tied = votes[ties_of(votes) != ""]
    rows += [(a, b, rater, source, 0.5) for shown, rater, source in zip(shown_lists(tied), tied["rater_id"], tied["source"])
             for a in shown for b in shown if a != b]
    return pd.DataFrame(rows, columns=["winner", "loser", "rater_id", "source", "weight"])


def win_matrix(pairs: pd.DataFrame, methods: list[str]) -> np.ndarray:
    """wins[i, j] = how often methods[i] beat methods[j] (a tie adds half each way)."""
    index = {m: i for i, m in enumerate(methods)}
    wins = np.zeros((len(methods), len(methods)))
    weights = pairs["weight"].to_numpy(float) if "weight" in pairs.columns else 1.0
    np.add.at(wins, (pairs["winner"].map(index).to_numpy(int), pairs["loser"].map(index).to_numpy(int)), weights)
    return wins


def bradley_terry(wins: np.ndarray, prior: float = 0.1, iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) by Hunter's MM algorithm.

    `prior` pseudo-wins each way on every pair keep a method that never won finite and join
    methods never compared directly; with a few hundred votes its pull is negligible.
    """
    return bradley_terry_many(wins[None], prior, iterations, tol)[0]


def bradley_terry_many(wins: np.ndarray, prior: float = 0.1, iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """`bradley_terry` of a stack of win matrices (B x k x k) at once: the bootstrap's hundreds of
    fits in one vectorized loop; each fit stops (is frozen) as soon as it converges on its own."""
    k = wins.shape[-1]
    w = wins + prior * (1 - np.eye(k))
    games = w + np.swapaxes(w, 1, 2)
    total_wins = w.sum(axis=2)
    p = np.ones(wins.shape[:2])
    active = np.ones(len(wins), bool)
    for _ in range(iterations):
        denom = (games / (p[:, :, None] + p[:, None, :])).sum(axis=2)
        new = total_wins / denom
        new /= np.exp(np.log(new).mean(axis=1, keepdims=True))
        moved = np.max(np.abs(np.log(new) - np.log(p)), axis=1)
        p = np.where(active[:, None], new, p)
        active &= moved >= tol
        if not active.any():
            break
    return np.log(p)


def bootstrap_bradley_terry(pairs: pd.DataFrame, methods: list[str], n_boot: int = 500,
                            seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the scores, resampling sources (IP hashes; raters where no address
    was recorded), not votes: the votes of one source are correlated (one person, however many
    rater ids), so resampling votes or ids would understate the uncertainty."""
    cluster = "source" if "source" in pairs.columns else "rater_id"
    index = {m: i for i, m in enumerate(methods)}
    names, group = np.unique(pairs[cluster].astype(str).to_numpy(), return_inverse=True)
    per_cluster = np.zeros((len(names), len(methods), len(methods)))
    weights = pairs["weight"].to_numpy(float) if "weight" in pairs.columns else np.ones(len(pairs))
    np.add.at(per_cluster, (group, pairs["winner"].map(index).to_numpy(int), pairs["loser"].map(index).to_numpy(int)),
              weights)
    return bootstrap_scores(per_cluster, n_boot, seed, level)


BOOT_BATCH = 64
"""Resamples fitted together: bounds the (batch x clusters) weight matrix at a million votes."""


def bootstrap_scores(per_cluster: np.ndarray, n_boot: int = 500, seed: int = 0,
                     level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the Bradley-Terry scores from per-cluster win matrices (G x k x k,
    clusters in a fixed order): each resample draws G clusters with replacement and sums their
    matrices, as one matrix product per batch, so the cost is linear in the clusters, not votes."""
    g, k = per_cluster.shape[0], per_cluster.shape[-1]
    if g == 0 or n_boot == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    rng = np.random.default_rng(seed)
    flat = per_cluster.reshape(g, k * k).astype(np.float32)  # whole and half wins: exact below 2**23
    draws = np.empty((n_boot, k))
    for start in range(0, n_boot, BOOT_BATCH):
        size = min(BOOT_BATCH, n_boot - start)
        picks = rng.integers(0, g, (size, g)) + g * np.arange(size)[:, None]  # one resample of clusters per row
        counts = np.bincount(picks.ravel(), minlength=size * g).reshape(size, g).astype(np.float32)
        draws[start:start + size] = bradley_terry_many((counts @ flat).astype(float).reshape(size, k, k))
    alpha = (1 - level) / 2
    return np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0)


def win_rates(wins: np.ndarray) -> np.ndarray:
    """rate[i, j] = share of i-vs-j comparisons that i won; NaN where never compared."""
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins / games, np.nan)
    np.fill_diagonal(rate, np.nan)
    return rate


def rank_ranges(lo: np.ndarray, hi: np.ndarray) -> list[str]:
    """Each method's rank as a range where the score intervals overlap ("1-2"): its best rank is
    1 + the methods whose interval lies wholly above its own, its worst the count of methods
    whose interval does not lie wholly below it."""
    ranks = []
    for i in range(len(lo)):
        if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
            ranks.append("")
            continue
        best = 1 + int(np.sum(lo > hi[i]))
        worst = len(lo) - int(np.sum(hi < lo[i]))
        ranks.append(str(best) if best == worst else f"{best}-{worst}")
    return ranks


def votes_to_separate(wins: np.ndarray, z: float = Z95) -> np.ndarray:
    """more[i, j]: further i-vs-j comparisons that, at the current win rate p of i over j, would
    make the normal 95% interval of p exclude 1/2 (z^2 p (1 - p) / (p - 1/2)^2 in all, minus
    those held); 0 when already apart, inf when p is exactly 1/2 or the pair was never compared."""
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(games > 0, wins / games, 0.5)
        needed = z * z * p * (1 - p) / (p - 0.5) ** 2
    more = np.where(np.isfinite(needed), np.maximum(0, np.ceil(needed - games)), np.inf)
    np.fill_diagonal(more, np.nan)
    return more


PAIR_COLUMNS = ["pair", "comparisons", "win rate of the first", "more votes to separate"]


def _wilson_excludes_half(wins: float, games: float) -> bool:
    """Whether the Wilson 95% interval of wins / games (ties as half wins) lies wholly on one side of 1/2."""
    if games <= 0:
        return False
    p, z2 = wins / games, Z95 * Z95
    centre = (p + z2 / (2 * games)) / (1 + z2 / games)
    half = Z95 * np.sqrt(p * (1 - p) / games + z2 / (4 * games * games)) / (1 + z2 / games)
    return centre - half > 0.5 or centre + half < 0.5


def pair_table(methods: list[str], wins: np.ndarray, sources: np.ndarray | None = None) -> pd.DataFrame:
    """Per pair of methods: comparisons so far, the first's win rate, and how many more would
    separate them. "separated" needs MIN_PAIR_COMPARISONS comparisons, a Wilson interval that
    excludes 1/2 and (when `sources`, the distinct sources per pair, is given) MIN_SOURCES sources;
    before that the count is `votes_to_separate`, at least what the minimum still asks for."""
    more = votes_to_separate(wins)
    rows = []
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            games = wins[i, j] + wins[j, i]
            a, b = (i, j) if wins[i, j] >= wins[j, i] else (j, i)
            rate = f"{100 * wins[a, b] / games:.0f}%" if games else ""
            enough = games >= MIN_PAIR_COMPARISONS and (sources is None or sources[i, j] >= MIN_SOURCES)
            if enough and _wilson_excludes_half(wins[a, b], games):
                need: object = "separated"
            elif not np.isfinite(more[a, b]):
                need = "no difference yet"
            else:
                need = int(max(more[a, b], MIN_PAIR_COMPARISONS - games, 1))
            rows.append([f"{methods[a]} vs {methods[b]}", round(float(games), 1), rate, need])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


@dataclass
class Leaderboard:
    table: pd.DataFrame
    """One row per method, best first."""
    methods: list[str]
    rates: np.ndarray
    headline: str
    votes: int
    raters: int
    pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIR_COLUMNS))
    """Per pair: comparisons, win rate, and how many more votes would separate them."""
    sources: int = 0
    """Distinct sources (IP hashes; rater ids where none was recorded) behind the votes."""


TABLE_COLUMNS = ["method", "shown", "wins", "win share %", "Wilson 95% CI %", "chance %", "BT score", "BT 95% CI",
                 "rank", "badge"]

# --- votes reduced to integer codes -----------------------------------------------------------

TIE_GOOD, TIE_BAD, UNDECIDED = 4, 5, 6
OUTCOMES = 7
"""A vote's outcome code: 0-3 the chosen position in the shown order, a tie of either kind, or
"can't decide". With the code of its shown order it says everything the statistics use."""


@dataclass
class Tally:
    """Votes as parallel integer arrays (no row objects), so a million of them fit in a few tens
    of MB and every statistic is a handful of vectorized passes. Codes index `shown` (the shown
    orders, as method lists) and `source_names`; rater codes only need to be distinct."""

    shown: list[list[str]]
    code: np.ndarray
    outcome: np.ndarray
    rater: np.ndarray
    source: np.ndarray
    source_names: list[str]
    fast: np.ndarray

    def __len__(self) -> int:
        return len(self.code)

    def subset(self, keep: np.ndarray) -> Tally:
        return Tally(self.shown, self.code[keep], self.outcome[keep], self.rater[keep], self.source[keep],
                     self.source_names, self.fast[keep])


def outcome_code(shown: list[str], winner: str, flags: object) -> int:
    """The outcome code of a vote row (its winner's position, else its tie kind, else undecided)."""
    if winner and winner in shown:
        return shown.index(winner)
    tie = tie_kind(flags)
    return TIE_GOOD if tie == "both_good" else TIE_BAD if tie == "both_bad" else UNDECIDED


def tally_of(votes: pd.DataFrame) -> Tally:
    """A votes frame (the store's columns; ip_hash and flags optional) as a Tally."""
    code, orders = pd.factorize(votes["shown_order"].astype(str)) if len(votes) else (np.zeros(0, int), [])
    shown = [str(o).split(";") for o in orders]
    flags = votes["flags"] if "flags" in votes.columns else pd.Series("", index=votes.index)
    outcome = np.array([outcome_code(shown[c], str(w), f) for c, w, f in zip(code, votes["winner_method"], flags)], int)
    source, names = pd.factorize(sources_of(votes)) if len(votes) else (np.zeros(0, int), [])
    rater = pd.factorize(votes["rater_id"].astype(str))[0] if len(votes) else np.zeros(0, int)
    fast = np.array(["fast" in str(f).split(";") for f in flags], bool)
    return Tally(shown, np.asarray(code), outcome, np.asarray(rater), np.asarray(source), list(names), fast)


@dataclass
class _Reduced:
    """A Tally summed per (shown order, outcome): what every point estimate is computed from."""

    methods: list[str]
    members: list[list[int]]
    """Per local code: the shown methods as indices into `methods`."""
    inverse: np.ndarray
    """Per vote: its local code."""
    counts: np.ndarray
    """Votes per (local code, outcome)."""
    contrib: np.ndarray
    """Per (local code, outcome): the k x k comparisons one such vote implies."""


def _reduce(t: Tally) -> _Reduced:
    codes, inverse = np.unique(t.code, return_inverse=True)
    methods = sorted({m for c in codes for m in t.shown[c]})
    index = {m: i for i, m in enumerate(methods)}
    members = [[index[m] for m in t.shown[c]] for c in codes]
    k = len(methods)
    contrib = np.zeros((len(codes), OUTCOMES, k, k))
    for c, shown in enumerate(members):
        for o, winner in enumerate(shown[:TIE_GOOD]):
            for loser in shown:
                if loser != winner:
                    contrib[c, o, winner, loser] += 1.0
        for a in shown:
            for b in shown:
                if a != b:
                    contrib[c, TIE_GOOD:UNDECIDED, a, b] += 0.5
    counts = np.bincount(inverse * OUTCOMES + t.outcome, minlength=len(codes) * OUTCOMES).reshape(-1, OUTCOMES)
    return _Reduced(methods, members, inverse.ravel(), counts, contrib)


def _per_cluster(t: Tally, r: _Reduced) -> np.ndarray:
    """Per source with a judged vote (sorted by name, the bootstrap's fixed order): its k x k win
    matrix, one sparse-times-dense product over the votes (linear in them)."""
    judged = t.outcome != UNDECIDED
    present, group = np.unique(t.source[judged], return_inverse=True)
    k = len(r.methods)
    if not len(present):
        return np.zeros((0, k, k))
    names = np.array([t.source_names[s] for s in present])
    rank = np.empty(len(present), int)
    rank[np.argsort(names, kind="stable")] = np.arange(len(present))
    key = r.inverse[judged] * OUTCOMES + t.outcome[judged]
    votes = sparse.coo_matrix((np.ones(len(key)), (rank[group.ravel()], key)),
                              shape=(len(present), r.counts.size)).tocsr()
    return np.asarray(votes @ r.contrib.reshape(r.counts.size, k * k)).reshape(len(present), k, k)


def _points(r: _Reduced) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(which code shows which method, votes that showed each method, its wins with ties as
    halves, the wins chance would give it), all over the judged votes, from the counts alone."""
    k = len(r.methods)
    member = np.zeros((len(r.members), k), int)
    winner_of = np.zeros((len(r.members), OUTCOMES, k))
    for c, shown in enumerate(r.members):
        member[c, shown] = 1
        for o, winner in enumerate(shown[:TIE_GOOD]):
            winner_of[c, o, winner] = 1.0
        winner_of[c, TIE_GOOD:UNDECIDED] = 0.5 * member[c]
    size = np.array([len(s) for s in r.members], float)
    judged_counts = r.counts[:, :UNDECIDED].sum(axis=1)
    return (member, judged_counts @ member, np.einsum("co,cok->k", r.counts, winner_of),
            (judged_counts / size) @ member)


def win_shares(t: Tally) -> pd.DataFrame:
    """(method, win share %) with ties as half wins, best Bradley-Terry score first (the order of
    the leaderboard's table): a rater's own picks, without the intervals and tests."""
    r = _reduce(t)
    _, appearances, wins_total, _ = _points(r)
    score = bradley_terry(np.einsum("co,comn->mn", r.counts, r.contrib))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.round(100 * np.where(appearances > 0, wins_total / np.maximum(appearances, 1), np.nan), 1)
    table = pd.DataFrame({"method": r.methods, "win share %": share, "score": np.round(score, 3)})
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def leaderboard(votes: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> Leaderboard:
    """Everything the Leaderboard tab shows, from the raw votes."""
    return leaderboard_of(tally_of(votes), n_boot, seed)


def leaderboard_of(t: Tally, n_boot: int = 500, seed: int = 0) -> Leaderboard:
    """Everything the Leaderboard tab shows, from a Tally: point estimates from the per-(shown
    order, outcome) counts, intervals from the per-source matrices."""
    r = _reduce(t)
    methods, k = r.methods, len(r.methods)
    if not methods:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        return Leaderboard(empty, [], np.zeros((0, 0)), "No votes yet.", 0, 0)
    member, appearances, wins_total, expected = _points(r)
    sources = len(np.unique(t.source))
    lo, hi = wilson_interval(wins_total, appearances)
    wins = np.einsum("co,comn->mn", r.counts, r.contrib)
    score = bradley_terry(wins)
    per_cluster = _per_cluster(t, r)
    if sources >= MIN_SOURCES:
        bt_lo, bt_hi = bootstrap_scores(per_cluster, n_boot, seed)
        intervals = [f"{a:.2f} – {b:.2f}" if np.isfinite(a) else "" for a, b in zip(bt_lo, bt_hi)]
        ranks = rank_ranges(bt_lo, bt_hi)
    else:  # a bootstrap over fewer sources has (near) zero width: it would fake certainty
        intervals = [f"needs {MIN_SOURCES} sources"] * k
        ranks = [f"1-{k}" if k > 1 else "1"] * k
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
        "BT 95% CI": intervals,
        "rank": ranks,
        "badge": ["provisional" if n < PROVISIONAL_BELOW or sources < MIN_SOURCES else "" for n in appearances],
    }).sort_values("BT score", ascending=False, kind="stable").reset_index(drop=True)
    headline = _headline(t, r, member, wins_total, appearances, expected)
    pair_count = ((per_cluster + np.swapaxes(per_cluster, 1, 2)) > 0).sum(axis=0)
    return Leaderboard(table, methods, win_rates(wins), headline, len(t), len(np.unique(t.rater)),
                       pair_table(methods, wins, pair_count), sources)


def cluster_test(excess: np.ndarray) -> float:
    """Two-sided p of "no preference" from each source's excess wins over chance (wins minus the
    wins chance would give, summed over the source's votes): a cluster-robust t test with
    G - 1 degrees of freedom, so one source's many votes weigh as one opinion. NaN below
    MIN_SOURCES sources."""
    g = len(excess)
    if g < MIN_SOURCES or not np.any(excess):
        return float("nan") if g < MIN_SOURCES else 1.0
    t = excess.sum() / np.sqrt(g / (g - 1) * np.sum(excess ** 2))
    return float(2 * sps.t.sf(abs(t), g - 1))


def design_effect(cluster_sizes: np.ndarray) -> float:
    """The worst-case design effect of clustered votes (every vote of a source alike) from the
    votes per source: the vote-weighted mean number of votes per source. Dividing a chi-square by
    it is the first-order Rao-Scott correction under that worst case."""
    sizes = np.asarray(cluster_sizes, float)
    return float((sizes ** 2).sum() / sizes.sum()) if sizes.sum() else 1.0


def _headline(t: Tally, r: _Reduced, member: np.ndarray, wins: np.ndarray, shown: np.ndarray,
              expected: np.ndarray) -> str:
    """'X% of the N votes that showed Y preferred it' for the most-chosen method (ties as half
    wins; N and X are its row of the table), the sources and rater ids behind them, a test over
    sources (not votes) of its outright decisions, and the ties and "can't decide" counted."""
    undecided = int((t.outcome == UNDECIDED).sum())
    good, bad = int((t.outcome == TIE_GOOD).sum()), int((t.outcome == TIE_BAD).sum())
    tail = ""
    if good + bad:
        tail += f" {good + bad} tie(s), counted as half a win each: {good} \"both good\", {bad} \"both bad\"."
    if undecided:
        tail += f" ({undecided} more were \"can't decide\".)"
    if wins.sum() == 0:
        return "No decided votes yet." + tail
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(shown > 0, wins / np.maximum(shown, 1), -1)
    best = int(np.argmax(share))
    name, n = r.methods[best], int(shown[best])
    judged = t.outcome != UNDECIDED
    showing = judged & (member[r.inverse, best] > 0)
    raters, sources = len(np.unique(t.rater[showing])), len(np.unique(t.source[showing]))
    text = (
        f"**{100 * wins[best] / n:.0f}% of the {n} votes that showed {name} preferred it** "
        f"(chance: {100 * expected[best] / n:.0f}%), from {sources} source{'s' if sources != 1 else ''} "
        f"({raters} rater id{'s' if raters != 1 else ''})"
    )
    outright = showing & (t.outcome < TIE_GOOD)
    if outright.any():
        picked = np.array([[o < len(s) and s[o] == best for o in range(OUTCOMES)] for s in r.members], float)
        size = np.array([len(s) for s in r.members], float)
        codes = r.inverse[outright]
        excess = picked[codes, t.outcome[outright]] - 1 / size[codes]
        group = np.unique(t.source[outright], return_inverse=True)[1].ravel()
        p = cluster_test(np.bincount(group, weights=excess))
        text += (f"; a test over sources: p = {p:.2g}" if np.isfinite(p) else
                 f"; too few sources for a test (at least {MIN_SOURCES})")
    text += "."
    compared = shown > 0
    cluster_sizes = np.unique(t.source[judged], return_counts=True)[1]
    if compared.sum() >= 2 and len(cluster_sizes) >= MIN_SOURCES:
        chi = sps.chisquare(wins[compared], expected[compared]).statistic / design_effect(cluster_sizes)
        p = sps.chi2.sf(chi, compared.sum() - 1)
        text += f" All methods equally preferred? Chi-square p (votes clustered by source) = {p:.2g}."
    return text + tail


SOURCE_COLUMNS = ["source", "rater ids", "votes", "fast votes", "top pick", "top pick share %", "flags"]
FLAG_MIN_VOTES = 10
"""A source's pattern is judged only from this many votes on."""
MANY_IDS = 5
"""More rater ids than this behind one source is flagged (a household has a few, a stuffer many)."""
FAST_SHARE = 0.5
"""More than this share of fast votes (under a second) is flagged."""
ONE_SIDED_SHARE = 0.9
"""More than this share of a source's decided votes for one method is flagged: with up to four
images shown, honest picks of the same method 9 times in 10 are rare."""


def source_table(votes: pd.DataFrame) -> pd.DataFrame:
    """The organiser's view of who voted (see source_table_of), from a votes frame."""
    return source_table_of(tally_of(votes))


def source_table_of(t: Tally) -> pd.DataFrame:
    """Per source (shown as a short hash of the IP hash, first voter first, then most votes
    first): its rater ids, votes, fast votes, most-picked method and share, and why it is flagged
    (if it is). Vectorized group counts: linear in the votes."""
    if not len(t):
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    present, first, group = np.unique(t.source, return_index=True, return_inverse=True)
    group = group.ravel()
    r, g = _reduce(t), len(present)
    votes = np.bincount(group, minlength=g)
    fast = np.bincount(group, weights=t.fast, minlength=g).astype(int)
    pairs = np.unique(group.astype(np.int64) * (int(t.rater.max()) + 1) + t.rater)
    ids = np.bincount(pairs // (int(t.rater.max()) + 1), minlength=g)
    winner = np.full((len(r.members), OUTCOMES), -1)
    for c, shown in enumerate(r.members):
        winner[c, :min(len(shown), TIE_GOOD)] = shown[:TIE_GOOD]
    won = winner[r.inverse, t.outcome]
    k, decided = len(r.methods), won >= 0
    key = group[decided].astype(np.int64) * k + won[decided]
    picks = np.bincount(key, minlength=g * k).reshape(g, k)
    seen = np.full(g * k, len(t))
    keys, at = np.unique(key, return_index=True)
    seen[keys] = np.flatnonzero(decided)[at]
    top = np.argmax(picks * (len(t) + 1) + (len(t) - seen.reshape(g, k)), axis=1)  # ties: the first picked
    picked = picks.sum(axis=1)
    top_share = np.where(picked > 0, picks[np.arange(g), top] / np.maximum(picked, 1), 0.0)
    rows = []
    for s in np.argsort(first, kind="stable"):
        flags = []
        if ids[s] > MANY_IDS:
            flags.append(f"{ids[s]} rater ids")
        if votes[s] >= FLAG_MIN_VOTES and fast[s] > FAST_SHARE * votes[s]:
            flags.append("mostly fast votes")
        if picked[s] >= FLAG_MIN_VOTES and top_share[s] > ONE_SIDED_SHARE:
            flags.append("one-sided picks")
        rows.append([source_label(t.source_names[present[s]]), int(ids[s]), int(votes[s]), int(fast[s]),
                     r.methods[top[s]] if picked[s] else "", round(100 * float(top_share[s]), 1), ", ".join(flags)])
    table = pd.DataFrame(rows, columns=SOURCE_COLUMNS)
    return table.sort_values("votes", ascending=False, kind="stable").reset_index(drop=True)


def source_label(source: str) -> str:
    """A short public name of a source: a hash of the (already keyed) IP hash, never the hash itself."""
    return "s-" + hashlib.sha256(source.encode()).hexdigest()[:10]


def without_flagged(votes: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the votes of unflagged sources, the number of sources left out)."""
    table = source_table(votes)
    flagged = set(table.loc[table["flags"] != "", "source"])
    if not flagged:
        return votes, 0
    keep = ~sources_of(votes).map(source_label).isin(flagged)
    return votes[keep], len(flagged)


def without_flagged_of(t: Tally) -> tuple[Tally, int]:
    """(the votes of unflagged sources, the number of sources left out), for a Tally."""
    table = source_table_of(t)
    flagged = set(table.loc[table["flags"] != "", "source"])
    if not flagged:
        return t, 0
    present, group = np.unique(t.source, return_inverse=True)
    out = np.array([source_label(t.source_names[s]) in flagged for s in present], bool)
    return t.subset(~out[group.ravel()]), len(flagged)
