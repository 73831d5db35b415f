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


def judged(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes with a winner or a tie: every vote that says something about the methods."""
    return votes[(votes["winner_method"].astype(str) != "") | (ties_of(votes) != "")]


def shown_lists(votes: pd.DataFrame) -> list[list[str]]:
    return [str(s).split(";") for s in votes["shown_order"]]


def methods_of(votes: pd.DataFrame) -> list[str]:
    """Every method shown in any vote, sorted."""
    return sorted({m for shown in shown_lists(votes) for m in shown})


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
    """Percentile interval of the scores, resampling sources (IP hashes; raters where no address
    was recorded), not votes: the votes of one source are correlated (one person, however many
    rater ids), so resampling votes or ids would understate the uncertainty."""
    cluster = "source" if "source" in pairs.columns else "rater_id"
    raters = sorted(pairs[cluster].unique())
    if len(raters) == 0 or n_boot == 0:
        return np.full(len(methods), np.nan), np.full(len(methods), np.nan)
    per_rater = np.stack([win_matrix(pairs[pairs[cluster] == r], methods) for r in raters])
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


def pair_sources(pairs: pd.DataFrame, methods: list[str]) -> np.ndarray:
    """count[i, j]: distinct sources behind the comparisons of methods i and j (either way)."""
    index = {m: k for k, m in enumerate(methods)}
    count = np.zeros((len(methods), len(methods)))
    if len(pairs):
        a, b = pairs["winner"].map(index).to_numpy(int), pairs["loser"].map(index).to_numpy(int)
        keyed = pd.DataFrame({"i": np.minimum(a, b), "j": np.maximum(a, b), "source": pairs["source"].to_numpy()})
        for (i, j), n in keyed.groupby(["i", "j"])["source"].nunique().items():
            count[i, j] = count[j, i] = n
    return count


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


def leaderboard(votes: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> Leaderboard:
    """Everything the Leaderboard tab shows, from the raw votes."""
    methods = methods_of(votes)
    raters = votes["rater_id"].nunique()
    if not methods:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        return Leaderboard(empty, [], np.zeros((0, 0)), "No votes yet.", 0, 0)
    sources = int(sources_of(votes).nunique())
    chosen, tied = judged(votes), votes[ties_of(votes) != ""]
    shown = shown_lists(chosen)
    appearances = np.array([sum(m in s for s in shown) for m in methods])
    tie_shown = [str(s).split(";") for s in tied["shown_order"]]
    wins_total = np.array([(chosen["winner_method"] == m).sum() + 0.5 * sum(m in s for s in tie_shown) for m in methods])
    expected = np.array([sum(1 / len(s) for s in shown if m in s) for m in methods])
    lo, hi = wilson_interval(wins_total, appearances)
    pairs = comparisons(votes)
    wins = win_matrix(pairs, methods)
    score = bradley_terry(wins)
    if sources >= MIN_SOURCES:
        bt_lo, bt_hi = bootstrap_bradley_terry(pairs, methods, n_boot, seed)
        intervals = [f"{a:.2f} – {b:.2f}" if np.isfinite(a) else "" for a, b in zip(bt_lo, bt_hi)]
        ranks = rank_ranges(bt_lo, bt_hi)
    else:  # a bootstrap over fewer sources has (near) zero width: it would fake certainty
        intervals = [f"needs {MIN_SOURCES} sources"] * len(methods)
        ranks = [f"1-{len(methods)}" if len(methods) > 1 else "1"] * len(methods)
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
    headline = _headline(votes, methods, wins_total, appearances, expected)
    return Leaderboard(table, methods, win_rates(wins), headline, len(votes), raters,
                       pair_table(methods, wins, pair_sources(pairs, methods)), sources)


TABLE_COLUMNS = ["method", "shown", "wins", "win share %", "Wilson 95% CI %", "chance %", "BT score", "BT 95% CI",
                 "rank", "badge"]


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


def design_effect(votes: pd.DataFrame) -> float:
    """The worst-case design effect of clustered votes (every vote of a source alike): the
    vote-weighted mean number of votes per source. Dividing a chi-square by it is the first-order
    Rao-Scott correction under that worst case."""
    sizes = sources_of(votes).value_counts().to_numpy(float)
    return float((sizes ** 2).sum() / sizes.sum()) if sizes.sum() else 1.0


def _headline(votes: pd.DataFrame, methods: list[str], wins: np.ndarray, shown: np.ndarray, expected: np.ndarray) -> str:
    """'X% of the N votes that showed Y preferred it' for the most-chosen method (ties as half
    wins; N and X are its row of the table), the sources and rater ids behind them, a test over
    sources (not votes) of its outright decisions, and the ties and "can't decide" counted."""
    kinds = ties_of(votes)
    undecided = int(((votes["winner_method"].astype(str) == "") & (kinds == "")).sum())
    tail = ""
    if (kinds != "").any():
        good, bad = int((kinds == "both_good").sum()), int((kinds == "both_bad").sum())
        tail += f" {good + bad} tie(s), counted as half a win each: {good} \"both good\", {bad} \"both bad\"."
    if undecided:
        tail += f" ({undecided} more were \"can't decide\".)"
    if wins.sum() == 0:
        return "No decided votes yet." + tail
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(shown > 0, wins / np.maximum(shown, 1), -1)
    best = int(np.argmax(share))
    name, n = methods[best], int(shown[best])
    chosen = judged(votes)
    showing = chosen[[name in s for s in shown_lists(chosen)]]
    raters, sources = showing["rater_id"].nunique(), sources_of(showing).nunique()
    text = (
        f"**{100 * wins[best] / n:.0f}% of the {n} votes that showed {name} preferred it** "
        f"(chance: {100 * expected[best] / n:.0f}%), from {sources} source{'s' if sources != 1 else ''} "
        f"({raters} rater id{'s' if raters != 1 else ''})"
    )
    outright = decided(showing)
    if len(outright):
        excess = pd.Series((outright["winner_method"] == name).to_numpy(float)
                           - np.array([1 / len(s) for s in shown_lists(outright)]), index=outright.index)
        p = cluster_test(excess.groupby(sources_of(outright)).sum().to_numpy())
        text += (f"; a test over sources: p = {p:.2g}" if np.isfinite(p) else
                 f"; too few sources for a test (at least {MIN_SOURCES})")
    text += "."
    compared = shown > 0
    if compared.sum() >= 2 and sources_of(chosen).nunique() >= MIN_SOURCES:
        chi = sps.chisquare(wins[compared], expected[compared]).statistic / design_effect(chosen)
        text += f" All methods equally preferred? Chi-square p (votes clustered by source) = {sps.chi2.sf(chi, compared.sum() - 1):.2g}."
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
    """The organiser's view of who voted: per source (shown as a short hash of the IP hash), its
    rater ids, votes, fast votes, most-picked method and share, and why it is flagged (if it is)."""
    if votes.empty:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    votes = votes.assign(source=sources_of(votes), fast=votes.get("flags", pd.Series("", index=votes.index))
                         .astype(str).str.split(";").map(lambda f: "fast" in f))
    rows = []
    for source, group in votes.groupby("source", sort=False):
        picks = group["winner_method"].astype(str)
        picks = picks[picks != ""]
        top = picks.value_counts()
        top_name, top_share = (top.index[0], top.iloc[0] / len(picks)) if len(picks) else ("", 0.0)
        ids, n, fast = group["rater_id"].nunique(), len(group), int(group["fast"].sum())
        flags = []
        if ids > MANY_IDS:
            flags.append(f"{ids} rater ids")
        if n >= FLAG_MIN_VOTES and fast > FAST_SHARE * n:
            flags.append("mostly fast votes")
        if len(picks) >= FLAG_MIN_VOTES and top_share > ONE_SIDED_SHARE:
            flags.append("one-sided picks")
        rows.append([source_label(source), ids, n, fast, top_name, round(100 * top_share, 1), ", ".join(flags)])
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
