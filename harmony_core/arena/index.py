"""The vote store's in-memory index: every stored vote as a few integers, kept up to date from the
bytes appended since the store's last look.

A million votes as row dicts would take gigabytes; here a vote is one slot in each of a few
numpy columns (about 30 bytes) and every string (rater, source, sample, shown order) is interned
once. Each rater's votes form a chain through the `after` column, so the duplicate check, a
rater's voted samples and their picks cost the rater's own votes, never the store's. Counts per
(mode, sample source, shown order, outcome) are kept as votes arrive: the crowd's win shares need
no pass over the votes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmony_core.arena import stats

MODES = ("best_of_n", "pairwise")
"""How a round shows its outputs (best of up to 4, or a pair): the one list for votes and rounds."""
SOURCES = ("study", "user")
"""Where a vote's sample comes from: the study set, or a user's own Compare results."""
FIELDS = ("rater_id", "ip_hash", "sample_id", "mode", "sample_source", "shown_order", "winner_method", "flags", "ts_utc")
"""The columns of a vote row the index keeps (as codes)."""


class Interner:
    """Strings to dense ints and back: each distinct string is stored once."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code


@dataclass
class Coded:
    """A column as a code per row and the distinct values: each distinct value is then checked
    and interned once. The store's reader codes a column once for its checks and the index."""

    codes: np.ndarray
    uniques: list[str]

    @classmethod
    def of(cls, values: Sequence[str]) -> Coded:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        return cls(codes, list(uniques))

    def __len__(self) -> int:
        return len(self.codes)


def _factorize(values: Sequence[str] | Coded) -> tuple[np.ndarray, list[str]]:
    """(a code per value, the distinct values): pandas' hash table, in C."""
    coded = values if isinstance(values, Coded) else Coded.of(values)
    return coded.codes, coded.uniques


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""votes.Vote.row's ts_utc."""


def cell_of(mode: str, sample_source: str) -> int:
    """The (mode, sample source) pair as one small int: the leaderboard's filters select cells."""
    return MODES.index(mode) * len(SOURCES) + SOURCES.index(sample_source)


COLUMNS = {"rater": np.int32, "source": np.int32, "sample": np.int32, "cell": np.int8, "shown": np.int32,
           "outcome": np.int8, "fast": np.bool_, "after": np.int32, "time": np.float64}
"""Per vote: its codes, `after`, the index of the same rater's previous vote (-1 for none), and
`time`, its UTC seconds (NaN if unreadable: the rate limits after a restart)."""


class VoteIndex:
    """Every vote the store has read, as integer columns plus interned strings. Not thread-safe:
    the store calls it under its own lock."""

    def __init__(self) -> None:
        self.raters, self.sources, self.samples, self.orders = Interner(), Interner(), Interner(), Interner()
        self.shown: list[list[str]] = []
        """Per shown-order code: its methods."""
        self.size = 0
        self._cols = {name: np.empty(1024, dtype) for name, dtype in COLUMNS.items()}
        self._last = np.full(1024, -1, np.int32)
        """Per rater code: the index of their latest vote."""
        self.methods = Interner()
        self._counts = np.zeros((len(MODES) * len(SOURCES), 64, stats.OUTCOMES), np.int64)
        """Votes per (cell, shown-order code, outcome), kept as votes arrive."""
        self._wins = np.zeros((64, stats.OUTCOMES, 0))
        """Per (shown-order code, outcome): the win each method gets (1 the pick, 0.5 a tie)."""

    def __len__(self) -> int:
        return self.size

    def column(self, name: str) -> np.ndarray:
        return self._cols[name][: self.size]

    def _grow(self, extra: int) -> None:
        """Room for `extra` more votes and for every rater interned so far (capacity doubles)."""
        need = self.size + extra
        if need > len(self._cols["rater"]):
            capacity = max(need, 2 * len(self._cols["rater"]))
            for name, column in self._cols.items():
                self._cols[name] = np.resize(column, capacity)
        if len(self.raters.names) > len(self._last):
            grown = np.full(max(len(self.raters.names), 2 * len(self._last)), -1, np.int32)
            grown[: len(self._last)] = self._last
            self._last = grown

    def extend(self, columns: Sequence[Sequence[str] | Coded]) -> None:
        """Add votes given as the FIELDS columns (parallel sequences of strings, or Coded, rows
        already validated by the store's reader). Columnar: each distinct string is looked up once and
        the rest is numpy, so a million votes load in seconds."""
        rater_id, ip, sample, mode, sample_source, order, winner, flags, stamps = columns
        n = len(rater_id)
        if not n:
            return
        rater_codes, raters = _factorize(rater_id)
        rater = np.array([self.raters.code(r) for r in raters], np.int32)[rater_codes]
        values = {"rater": rater, "source": self._sources(ip, rater_codes, raters), "sample": self._intern(self.samples, sample)}
        mode_codes, modes = _factorize(mode)
        source_codes, sources = _factorize(sample_source)
        values["cell"] = (np.array([cell_of(m, "study") for m in modes])[mode_codes]
                          + np.array([SOURCES.index(s) for s in sources])[source_codes])
        order_codes, orders = _factorize(order)
        values["shown"] = np.array([self._order(o) for o in orders], np.int32)[order_codes]
        values["outcome"] = self._outcomes(values["shown"], winner, flags)
        values["fast"] = np.fromiter(("fast" in f and "fast" in f.split(";") for f in flags), bool, n)
        when = pd.to_datetime(pd.Series(list(stamps), dtype=object), format=TIME_FORMAT, errors="coerce", utc=True)
        values["time"] = np.where(when.isna(), np.nan, when.to_numpy("datetime64[us]").astype(np.int64) / 1e6)
        self._grow(n)
        values["after"] = self._chain(rater)
        for name, column in values.items():
            self._cols[name][self.size: self.size + n] = column
        np.add.at(self._counts, (values["cell"], values["shown"], values["outcome"]), 1)
        self.size += n

    @staticmethod
    def _intern(interner: Interner, values: Sequence[str]) -> np.ndarray:
        codes, uniques = _factorize(values)
        return np.array([interner.code(u) for u in uniques], np.int32)[codes]

    def _sources(self, ip: Sequence[str], rater_codes: np.ndarray, raters: list[str]) -> np.ndarray:
        """Each vote's source code: its IP hash, else its rater id (votes.source_of)."""
        ip_codes, ips = _factorize(ip)
        source = np.array([self.sources.code("ip:" + i) if i else -1 for i in ips], np.int32)[ip_codes]
        missing = source < 0
        if missing.any():
            needed = np.unique(rater_codes[missing])
            by_rater = np.full(len(raters), -1, np.int32)
            by_rater[needed] = [self.sources.code("rater:" + raters[r]) for r in needed]
            source[missing] = by_rater[rater_codes[missing]]
        return source

    def _outcomes(self, shown: np.ndarray, winner: Sequence[str], flags: Sequence[str]) -> np.ndarray:
        """stats.outcome_code of every vote: the winner's position per distinct (order, winner),
        the tie kind read only for the votes without a winner."""
        winner_codes, winners = _factorize(winner)
        pairs, inverse = np.unique(shown.astype(np.int64) * len(winners) + winner_codes, return_inverse=True)
        position = np.array([self._position(int(p // len(winners)), winners[p % len(winners)]) for p in pairs], np.int8)
        outcome = position[inverse.ravel()]
        for i in np.flatnonzero(outcome < 0):
            outcome[i] = stats.outcome_code([], "", flags[i])
        return outcome

    def _position(self, shown: int, winner: str) -> int:
        methods = self.shown[shown]
        return methods.index(winner) if winner and winner in methods else -1

    def _chain(self, rater: np.ndarray) -> np.ndarray:
        """Each new vote's `after` (the same rater's previous vote, in this batch or before), and
        the raters' latest votes moved on to this batch's."""
        at = self.size + np.arange(len(rater), dtype=np.int32)
        order = np.argsort(rater, kind="stable")
        ranked = rater[order]
        same = ranked[1:] == ranked[:-1]
        previous = self._last[ranked]
        previous[1:][same] = at[order][:-1][same]
        after = np.empty(len(rater), np.int32)
        after[order] = previous
        ends = np.flatnonzero(np.append(~same, True))
        self._last[ranked[ends]] = at[order][ends]
        return after

    def _order(self, order: str) -> int:
        code = self.orders.code(order)
        if code == len(self.shown):
            methods = order.split(";")
            self.shown.append(methods)
            ids = [self.methods.code(m) for m in methods]
            if code >= self._counts.shape[1] or len(self.methods.names) > self._wins.shape[2]:
                self._grow_orders(2 * max(code, 32), len(self.methods.names) + 8)
            for o, winner in enumerate(ids[: stats.TIE_GOOD]):
                self._wins[code, o, winner] = 1.0
            self._wins[code, stats.TIE_GOOD: stats.UNDECIDED, ids] = 0.5
        return code

    def _grow_orders(self, orders: int, methods: int) -> None:
        counts = np.zeros((self._counts.shape[0], max(orders, self._counts.shape[1]), stats.OUTCOMES), np.int64)
        counts[:, : self._counts.shape[1]] = self._counts
        wins = np.zeros((counts.shape[1], stats.OUTCOMES, max(methods, self._wins.shape[2])))
        wins[: self._wins.shape[0], :, : self._wins.shape[2]] = self._wins
        self._counts, self._wins = counts, wins

    # --- one rater: the cost of their own votes ----------------------------------------------

    def rater_votes(self, rater_id: str) -> list[int]:
        """Indices of this rater's votes, newest first (a walk along their chain)."""
        rater = self.raters.codes.get(rater_id)
        found: list[int] = []
        at = -1 if rater is None else int(self._last[rater])
        after = self._cols["after"]
        while at >= 0:
            found.append(at)
            at = int(after[at])
        return found

    def voted(self, rater_id: str, sample_id: str, mode: str, sample_source: str) -> bool:
        """Whether this (rater, sample, mode, source) already has a vote: the exactly-once key."""
        sample = self.samples.codes.get(sample_id)
        if sample is None:
            return False
        cell = cell_of(mode, sample_source)
        samples, cells = self._cols["sample"], self._cols["cell"]
        return any(samples[i] == sample and cells[i] == cell for i in self.rater_votes(rater_id))

    def voted_samples(self, rater_id: str, mode: str, sample_source: str) -> set[str]:
        cell = cell_of(mode, sample_source)
        samples, cells = self._cols["sample"], self._cols["cell"]
        return {self.samples.names[samples[i]] for i in self.rater_votes(rater_id) if cells[i] == cell}

    # --- many votes: vectorized ----------------------------------------------------------------

    def tally(self, cells: Iterable[int] | None = None, votes: Sequence[int] | np.ndarray | None = None) -> stats.Tally:
        """The votes of the given cells (None: all), or the given vote indices, as a stats.Tally
        (copies of the columns: the statistics run outside the store's lock)."""
        keep: np.ndarray | slice
        if votes is not None:
            keep = np.asarray(votes, int)
        elif cells is None:
            keep = slice(None)
        else:
            keep = np.isin(self.column("cell"), list(cells))
        col = {name: self.column(name)[keep] for name in ("shown", "outcome", "rater", "source", "fast")}
        return stats.Tally(list(self.shown), col["shown"], col["outcome"].astype(int), col["rater"], col["source"],
                           self.sources.names, col["fast"])

    def since(self, start: float) -> list[tuple[str, str, float]]:
        """(rater id, IP hash or "", UTC seconds) of the votes from `start` on, oldest first: what
        the rate limits counted before a restart."""
        times = self.column("time")
        recent = np.flatnonzero(times >= start)
        recent = recent[np.argsort(times[recent], kind="stable")]
        raters, sources = self.column("rater"), self.column("source")
        ip = [name[3:] if name.startswith("ip:") else "" for name in self.sources.names]
        return [(self.raters.names[raters[i]], ip[sources[i]], float(times[i])) for i in recent]

    def pair_wins(self, cells: Iterable[int]) -> tuple[list[str], np.ndarray]:
        """(methods, wins[i, j] = comparisons i won over j, ties as halves) over the given cells,
        from the running counts: a loop over the distinct shown orders, whatever the votes."""
        counts = self._counts[sorted(set(cells))].sum(axis=0)
        names = list(self.methods.names)
        wins = np.zeros((len(names), len(names)))
        for code in np.flatnonzero(counts[:, : stats.UNDECIDED].sum(axis=1)):
            ids = [self.methods.codes[m] for m in self.shown[code]]
            ties = 0.5 * (counts[code, stats.TIE_GOOD] + counts[code, stats.TIE_BAD])
            for o, winner in enumerate(ids):
                for other in ids:
                    if other != winner:
                        wins[winner, other] += (counts[code, o] if o < stats.TIE_GOOD else 0) + ties
        return names, wins

    def shares(self, cells: Iterable[int]) -> tuple[dict[str, float], int]:
        """({method: win share %, ties as half wins}, votes) over the given cells, from the running
        counts: a product over the distinct shown orders, whatever the number of votes."""
        counts = self._counts[sorted(set(cells))].sum(axis=0)
        shows = (self._wins[:, : stats.UNDECIDED] > 0).any(axis=1)  # per code: the methods it shows
        shown = counts[:, : stats.UNDECIDED].sum(axis=1) @ shows
        wins = np.einsum("co,com->m", counts, self._wins)
        names = self.methods.names
        return ({names[m]: float(np.round(100 * wins[m] / shown[m], 1)) for m in np.flatnonzero(shown)},
                int(counts.sum()))
