"""The blind study at scale: a synthetic vote store of any size, measured through the app's own
functions (the store's start-up, a round, a vote, the leaderboard with its bootstrap intervals)
against an empty store, with the process's memory.

`python -m harmony_core bench-study --votes 1000000 --raters 100000` writes the store as one shard
in the store's own row encoding (csv rows of votes.COLUMNS), votes drawn from Luce's choice model
over the study set's methods, then measures. Nothing here is a test: the numbers go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil

from harmony_core import __version__
from harmony_core.arena import votes
from harmony_core.arena.studyset import StudySet
from harmony_core.studio import raters, study

DEFAULT_STUDY = Path(__file__).resolve().parent.parent / "examples" / "study"
SOURCE_SHARE = 0.9
"""Distinct network addresses per rater: some raters share one (a household), as in real studies."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--votes", type=int, default=100_000, help="stored votes in the synthetic store")
    parser.add_argument("--raters", type=int, default=10_000, help="distinct raters behind them")
    parser.add_argument("--study", default=str(DEFAULT_STUDY), help="study set the rounds are drawn from")
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds and votes (medians reported)")
    parser.add_argument("--folder", help="where to write the store (default: a temporary folder, removed after)")
    parser.add_argument("--seed", type=int, default=0)


def write_store(folder: Path, study_set: StudySet, n_votes: int, n_raters: int, secret: bytes, seed: int = 0) -> float:
    """A shard of n_votes synthetic votes from n_raters raters (as even as possible), each rater's
    votes on distinct (sample, mode) keys; returns the seconds it took."""
    slots = [(mode, sample.id) for mode in votes.MODES for sample in study_set.samples]
    per_rater = -(-n_votes // n_raters)
    if per_rater > len(slots):
        raise SystemExit(f"at most {len(slots)} votes per rater with this study set; ask for more raters")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    methods = study_set.methods
    strength = np.exp(np.linspace(-1, 1, len(methods)))
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    addresses = max(1, int(SOURCE_SHARE * n_raters))
    with open(folder / votes.shard_name(), "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(votes.COLUMNS)
        written = 0
        for r in range(n_raters):
            rater = raters.issue_rater_id(secret)
            ip = votes.ip_hash(f"10.{r % addresses // 65536}.{r % addresses // 256 % 256}.{r % 256}", secret)
            offset = int(rng.integers(len(slots)))
            for k in range(min(per_rater, n_votes - written)):
                mode, sample = slots[(offset + k) % len(slots)]
                shown = rng.permutation(len(methods))[: 4 if mode == "best_of_n" else 2]
                p = strength[shown] / strength[shown].sum()
                choice: int | None = int(rng.choice(len(shown), p=p))
                flags = [f"seed={int(rng.integers(1 << 30))}"]
                if rng.random() < 0.05:
                    choice = None
                    if mode == "pairwise":
                        flags.append("tie=both_good")
                names = [methods[i] for i in shown]
                writer.writerow([uuid.uuid4().hex, votes.SCHEMA_VERSION, stamp, __version__, mode, sample, "study",
                                 ";".join(names), "" if choice is None else choice,
                                 "" if choice is None else names[choice], rater, "", ip,
                                 int(rng.integers(800, 9000)), ";".join(flags)])
            written += min(per_rater, n_votes - written)
            if written >= n_votes:
                break
    return time.perf_counter() - start


def _vote_and_round(store: votes.VoteStore, study_set: StudySet, secret: bytes, rounds: int) -> tuple[float, float]:
    """Median ms of a next round and of a vote, each for a rater who already has CROWD_AFTER votes
    (so the vote also computes their picks against the crowd, the costliest vote)."""
    limiter = raters.RateLimiter(raters.RateLimits(0, 0, 0, 0, 0))
    round_ms, vote_ms = [], []
    for i in range(rounds):
        rater = raters.issue_rater_id(secret)
        for sample in study_set.samples:
            store.append(votes.Vote("best_of_n", sample.id, "study", study_set.methods[:4], 0, rater))
        store.append(votes.Vote("pairwise", study_set.samples[0].id, "study", study_set.methods[:2], 1, rater))
        start = time.perf_counter()
        state, _ = study.start_round(study_set, store, rater, "Pairwise (A/B)", limiter)
        round_ms.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        view = study.cast_vote(state, "A", store, rater, "bench", f"192.0.2.{i % 250}", secret, limiter)
        vote_ms.append(1000 * (time.perf_counter() - start))
        assert "against the crowd" in view.message
        study.discard(state)
    return statistics.median(round_ms), statistics.median(vote_ms)


def measure(folder: Path, study_set: StudySet, secret: bytes, rounds: int) -> dict[str, float]:
    """Start-up (the store and its index from the files), the leaderboard cold and cached, the
    Sources table, a round and a vote; RSS after all of it."""
    start = time.perf_counter()
    store = votes.VoteStore(folder)
    stored = store.refresh()
    result = {"stored votes": stored, "start-up s": time.perf_counter() - start}
    start = time.perf_counter()
    _, board, _ = study.board(store)
    result["leaderboard s"] = time.perf_counter() - start
    if stored and board.sources >= 5:
        assert "needs" not in board.table["BT 95% CI"].iloc[0]  # the intervals were computed
    start = time.perf_counter()
    study.board(store)
    result["leaderboard cached ms"] = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    study.sources_board(store)
    result["sources table s"] = time.perf_counter() - start
    result["next round ms"], result["vote ms"] = _vote_and_round(store, study_set, secret, rounds)
    result["RSS MB"] = psutil.Process().memory_info().rss / 2**20
    result["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run(args: argparse.Namespace) -> int:
    study_set = StudySet.load(args.study)
    secret = b"bench-study"
    root = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        empty = measure(root / "empty", study_set, secret, args.rounds)
        written = write_store(root / "full", study_set, args.votes, args.raters, secret, args.seed)
        full = measure(root / "full", study_set, secret, args.rounds)
    finally:
        if not args.folder:
            shutil.rmtree(root, ignore_errors=True)
    print(f"synthetic store: {args.votes} votes from {args.raters} raters written in {written:.1f} s")
    print("| | empty store | " + f"{full['stored votes']:,} votes |")
    print("|---|---:|---:|")
    for key in full:
        if key != "stored votes":
            print(f"| {key} | {empty[key]:.3g} | {full[key]:.3g} |")
    print(f"vote: {full['vote ms'] / empty['vote ms']:.2f}x the empty store's; "
          f"next round: {full['next round ms'] / empty['next round ms']:.2f}x")
    return 0
