"""The Blind study and Leaderboard tabs' logic: rounds, votes, the board. No Gradio here."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harmony_core import export, imaging
from harmony_core.arena import stats
from harmony_core.arena.hub import restore_shards, start_hub_sync
from harmony_core.arena.index import cell_of
from harmony_core.arena.studyset import (
    LETTERS,
    MAX_SHOWN,
    Round,
    StudySample,
    StudySet,
    next_round,
    sample_id,
    user_round,
)
from harmony_core.arena.votes import (
    MODES,
    SOURCES,
    DuplicateVote,
    Vote,
    VoteStore,
    anonymous_lines,
    ip_hash,
    neutralize,
    session_key,
)
from harmony_core.errors import InputError
from harmony_core.studio import blind, raters
from harmony_core.studio.scratch import scratch_folder

log = logging.getLogger(__name__)
CANT_DECIDE = "Can't decide"
TIES = {"Both good": "both_good", "Both bad": "both_bad"}
"""Pairwise mode's ties (button label -> the kind stored in the vote's flags as tie=KIND)."""
CROWD_AFTER = 10
"""Votes after which a rater sees their own picks against everyone's."""
MODE_LABELS = {"Best of all (A-D)": "best_of_n", "Pairwise (A/B)": "pairwise"}
DEMO_NOTE = ("**Demo set:** these images ship with the code, so anyone can match them to their methods; "
             "its votes show how the study works and prove nothing. A real study runs on a private set "
             "(docs/security.md).")


def other_modes(mode: str) -> str:
    """The hint at the end of a mode: where more rounds are."""
    others = [label for label, key in MODE_LABELS.items() if key != mode]
    return (f"For more rounds, switch the **Mode** above to *{' or '.join(others)}*; "
            "the **Leaderboard** tab shows how the methods stand.")


FAST_VOTE_MS = 1000
"""Votes quicker than this get the flag `fast` (an organizer may want to look at them)."""


def round_rater(rater_id: str | None, secret: bytes, limiter: raters.RateLimiter, source: str) -> str:
    """The rater of a round: the id sent when this server issued it (else InputError), a fresh
    signed one when none was sent (an API client's first call), within the source's (IP hash's)
    daily quota of new ids."""
    if rater_id:
        return raters.verified_rater_id(rater_id, secret)
    limiter.new_id(source)
    return raters.issue_rater_id(secret)


def browser_rater(rater_id: str | None, secret: bytes, limiter: raters.RateLimiter, source: str) -> str:
    """The id a browser keeps: its own when this server issued it, else (none yet, or one from an
    older version or another server) a fresh signed one within the source's quota of new ids, or
    "" when that is used up (the study then says so when a round is asked for)."""
    if raters.is_issued(rater_id, secret):
        return str(rater_id)
    try:
        limiter.new_id(source)
    except raters.RateLimited:
        return ""
    return raters.issue_rater_id(secret)


def rater_note(rater_id: str) -> str:
    if not rater_id:
        return "No rater id yet: this network has asked for many today. Press **Next image** to try again."
    return f"Your anonymous rater id (kept in this browser): `{rater_id}`"


@dataclass
class RoundState:
    """Kept server-side per browser session (gr.State): the client never sees the method names
    before voting, only the blind copies in `files`."""

    round: Round
    rater_id: str
    source: str | None
    """The IP hash that started the round: only a call from it may vote or view (the state is tied
    to its caller, not only to a session hash), and it is charged for the round until the vote.
    None for a round started inside the library (no caller to tie it to)."""
    files: list[str]
    """The shown images in letter order, blind encodings under random names (see `blind_copies`)."""
    pixels: list[np.ndarray]
    """The same images as stored (before the blind dither): the difference view starts from them."""
    composite: np.ndarray
    box: tuple[int, int, int, int]
    shown_at: float
    voted: bool = False
    views: dict[tuple[bool, bool], list[str]] = field(default_factory=dict)
    """The other views, (zoom, difference) -> blind copies, each made once on its first request:
    the same object crop of each image (one box for all, `export.object_box`), and after the
    vote |image - composite|, whole or cropped."""


@dataclass
class RoundView:
    images: list[str | None]
    """MAX_SHOWN slots: an image path, or None for an unused slot."""
    captions: list[str]
    message: str
    ties: bool = False
    """Whether "Both good" / "Both bad" apply (a pairwise round)."""


QUESTION = f"Which looks most natural, as if the object had been photographed in this scene? Pick one, or *{CANT_DECIDE}*."


def blind_copies(images: list[np.ndarray]) -> list[str]:
    """A round's images as fresh blind encodings (blind.encode_round) under random names in a new
    scratch folder: the one way every blind round (study set or the rater's own results) serves
    its images, so no URL, file name, folder, byte or pixel hash says which method, sample or
    earlier round an image comes from."""
    folder = scratch_folder("blind-")
    paths = []
    for data in blind.encode_round(images):
        path = folder / f"{uuid.uuid4().hex}.png"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def _view(state: RoundState, captions: list[str], message: str) -> RoundView:
    images = list(state.files)
    return RoundView(images + [None] * (MAX_SHOWN - len(images)), captions, message, state.round.mode == "pairwise")


def round_images(state: RoundState, zoom: bool, difference: bool) -> list[str]:
    """The round's images as the rater asked to see them: whole or zoomed on the object, and after
    the vote optionally as the difference from the composite (never before: it would hint at
    which image is the unchanged composite). Each view is encoded once per round."""
    difference = difference and state.voted
    if not zoom and not difference:
        return list(state.files)
    if (zoom, difference) not in state.views:
        images = [difference_image(image, state.composite) for image in state.pixels] if difference else state.pixels
        state.views[(zoom, difference)] = blind_copies([export.crop(i, state.box) for i in images] if zoom else images)
    return list(state.views[(zoom, difference)])


DIFFERENCE_GAIN = 4
"""|image - composite| is multiplied by this, so colour shifts of a few levels show."""


def difference_image(image: np.ndarray, composite: np.ndarray) -> np.ndarray:
    """Where and how much an output changed the composite (black: unchanged)."""
    change = np.abs(image.astype(np.int16) - composite.astype(np.int16)) * DIFFERENCE_GAIN
    return np.clip(change, 0, 255).astype(np.uint8)


def _begin(rnd: Round, who: tuple[str, str], images: dict[str, np.ndarray], composite: np.ndarray, mask: np.ndarray,
           message: str) -> tuple[RoundState, RoundView]:
    pixels = [images[m] for m in rnd.shown]
    box = export.object_box(mask)
    state = RoundState(rnd, *who, blind_copies(pixels), pixels, composite, box, time.monotonic())
    return state, _view(state, list(LETTERS), message)


def mode_of(mode_label: object) -> str:
    """The vote mode of a Mode radio label (or of a mode's own name); InputError for anything else."""
    mode = MODE_LABELS.get(mode_label, mode_label) if isinstance(mode_label, str) else None
    if mode not in MODE_LABELS.values():
        raise InputError(f"Unknown mode: pick one of {', '.join(MODE_LABELS)}.")
    return str(mode)


def start_round(study: StudySet, store: VoteStore, rater_id: str, mode_label: str,
                limiter: raters.RateLimiter | None = None, source: str | None = None,
                previous: RoundState | None = None) -> tuple[RoundState | None, RoundView]:
    """The next round for this (verified) rater, or a thank-you when every sample has their vote;
    a pairwise round shows the least-compared pair not yet separated (studyset.next_round).
    The source (IP hash) is charged for the round until its vote; the session's previous round's
    files are removed (its images were served already)."""
    mode = mode_of(mode_label)
    with store.locked_index() as index:
        compared = index.pair_wins(cell_of(m, "study") for m in MODES)
    rnd = next_round(study, mode, store.voted_samples(rater_id, mode), compared=compared)
    if rnd is None:
        return None, RoundView([None] * MAX_SHOWN, list(LETTERS),
                               f"Thank you: you have voted on all {len(study.samples)} images in this mode. "
                               f"{other_modes(mode)}")
    if limiter is not None:
        limiter.open_round(source or "")
    discard(previous)
    composite = imaging.load_rgb(rnd.sample.composite, "study composite")
    mask = imaging.load_mask(rnd.sample.mask, "study mask")
    return _begin(rnd, (rater_id, source), {m: imaging.load_rgb(rnd.sample.outputs[m], "study image") for m in rnd.shown},
                  composite, mask,
                  QUESTION)


def start_user_round(composite: np.ndarray | None, mask: np.ndarray | None, outputs: dict[str, np.ndarray] | None,
                     store: VoteStore, rater_id: str, mode_label: str,
                     limiter: raters.RateLimiter | None = None, source: str | None = None,
                     previous: RoundState | None = None) -> tuple[RoundState, RoundView]:
    """A blind round over the rater's own Compare results; the vote is recorded as sample_source "user".

    Served like a study round (`blind_copies`). The rater has seen these results with their names
    in Compare, so the Leaderboard keeps such votes apart by source.
    """
    if composite is None or mask is None or not outputs:
        raise InputError("Run two or more methods in **Compare** (and let the run finish), then vote blind on their results.")
    mode = mode_of(mode_label)
    sid = sample_id(composite, mask)
    if sid in store.voted_samples(rater_id, mode, source="user"):
        raise InputError("You have already voted on this composite in this mode.")
    rnd = user_round(StudySample(sid, "your composite", Path(), Path(), dict.fromkeys(outputs, Path())), mode)
    if limiter is not None:
        limiter.open_round(source or "")
    discard(previous)
    return _begin(rnd, (rater_id, source), {m: outputs[m] for m in rnd.shown}, composite, mask,
                  f"Your composite. {QUESTION}")


def discard(state: RoundState | None) -> None:
    """Remove a finished or abandoned round's blind copies (Gradio's cache keeps what it served)."""
    if state is None:
        return
    for path in {Path(p).parent for p in [*state.files, *(p for view in state.views.values() for p in view)]}:
        shutil.rmtree(path, ignore_errors=True)


NOT_YOURS = "This round was started from another network or session; press **Next image** to start your own."


def cast_vote(state: RoundState | None, choice: str, store: VoteStore, rater_id: str, session_hash: str,
              client_ip: str | None, secret: bytes, limiter: raters.RateLimiter) -> RoundView:
    """Record the vote (exactly once, by the round's own signed rater, within the rate limits)
    and reveal which method was behind each letter. choice: a letter, CANT_DECIDE, or in a
    pairwise round one of TIES (stored with its kind)."""
    if state is None:
        raise InputError("Start a round first (press **Next image**).")
    if raters.verified_rater_id(rater_id, secret) != state.rater_id:
        raise InputError("This round was started for another rater id; press **Next image** to start your own.")
    hashed_ip = ip_hash(client_ip, secret)
    if state.source is not None and hashed_ip != state.source:
        raise InputError(NOT_YOURS)
    if state.voted:
        raise InputError("This round's vote is already recorded; press **Next image**.")
    rnd = state.round
    tie = TIES.get(choice)
    if tie and rnd.mode != "pairwise":
        raise InputError(f"'{choice}' is for pairwise rounds; pick one image or *{CANT_DECIDE}*.")
    if choice == CANT_DECIDE or tie:
        position = None
    elif choice in rnd.labels:
        position = rnd.labels.index(choice)
    else:
        raise InputError(f"'{choice}' is not one of the images shown.")
    latency = round(1000 * (time.monotonic() - state.shown_at))
    flags = [f"seed={rnd.seed}"] + ([f"{stats.TIE_FLAG}{tie}"] if tie else []) + (["fast"] if latency < FAST_VOTE_MS else [])
    limiter.take(state.rater_id, hashed_ip)
    try:
        store.append(Vote(
            mode=rnd.mode, sample_id=rnd.sample.id, sample_source=rnd.source, shown_order=rnd.shown,
            choice_pos=position, rater_id=state.rater_id, session_hash=session_key(session_hash, secret),
            ip_hash=hashed_ip, latency_ms=latency, flags=flags,
        ))
    except DuplicateVote:
        state.voted = True  # voted on this image before (another tab): this round is over too
        limiter.round_voted(state.source or "")
        raise
    state.voted = True
    limiter.round_voted(state.source or "")
    captions = [f"{letter} · {method}" + (" ✓ your pick" if i == position else "")
                for i, (letter, method) in enumerate(zip(rnd.labels, rnd.shown))]
    captions += list(LETTERS[len(captions):])
    if tie:
        picked = f"you found both {tie.split('_')[1]}"
    else:
        picked = "you could not decide" if position is None else f"you picked {rnd.labels[position]} ({rnd.shown[position]})"
    message = f"Recorded: {picked}. Press **Next image** for another."
    crowd = rater_vs_crowd(store, state.rater_id)
    return _view(state, captions, message + (f"\n\n{crowd}" if crowd else ""))


def restyle_round(state: RoundState | None, zoom: bool, difference: bool, source: str | None = None) -> list[str | None]:
    """The slots' images for the zoom / difference toggles (letters and captions unchanged);
    source: the caller's IP hash, which must be the round's (None: a caller inside the library)."""
    if state is None:
        return [None] * MAX_SHOWN
    if state.source is not None and source != state.source:
        raise InputError(NOT_YOURS)
    images = round_images(state, zoom, difference)
    return images + [None] * (MAX_SHOWN - len(images))


def rater_vs_crowd(store: VoteStore, rater_id: str, after: int = CROWD_AFTER) -> str:
    """Markdown: after `after` votes, this rater's win share per method next to everyone's
    (ties as half wins), so a rater sees where their taste differs; '' before that. Read from the
    index: the rater's own votes and the crowd's running counts, never the whole store."""
    study_cells = {cell_of(mode, "study") for mode in MODES}
    with store.locked_index() as index:
        cells = index.column("cell")
        mine = [i for i in index.rater_votes(neutralize(rater_id)) if cells[i] in study_cells]
        if len(mine) < after:
            return ""
        own = index.tally(votes=mine)
        shares, total = index.shares(study_cells)
    table = stats.win_shares(own)
    lines = [f"**Your picks against the crowd** ({len(mine)} of your votes, {total} in all; ties count half):",
             "", "| method | your win share | everyone's |", "|---|---|---|"]
    lines += [f"| {m} | {a:.0f}% | {shares.get(m, float('nan')):.0f}% |" for m, a in zip(table["method"], table["win share %"])]
    return "\n".join(lines)


MODE_FILTERS = {"All votes": None, "Best of all": "best_of_n", "Pairwise": "pairwise"}
SOURCE_FILTERS = {"Study set": "study", "Users' own composites": "user", "All images": None}
"""The study set first (the default): votes on a user's own results are not blind to the names."""


def heatmap(methods: list[str], rates: np.ndarray) -> Figure:
    """Row method's win rate against the column method, in the comparisons they shared."""
    size = 1.2 + 0.9 * max(len(methods), 2)
    figure = Figure(figsize=(size + 1.2, size), dpi=100)
    axis = figure.add_subplot()
    image = axis.imshow(np.ma.masked_invalid(rates), cmap="RdBu", vmin=0, vmax=1)
    axis.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    axis.set_yticks(range(len(methods)), methods)
    axis.set_xlabel("loser")
    axis.set_ylabel("winner")
    for i in range(len(methods)):
        for j in range(len(methods)):
            if np.isfinite(rates[i, j]):
                ink = "white" if abs(rates[i, j] - 0.5) > 0.3 else "black"
                axis.text(j, i, f"{100 * rates[i, j]:.0f}%", ha="center", va="center", fontsize=9, color=ink)
    figure.colorbar(image, ax=axis, label="win rate of row vs column")
    axis.set_title("Pairwise win rate")
    figure.tight_layout()
    return figure


def export_csv(store: VoteStore) -> Path:
    """The public votes CSV (votes.anonymous_csv: per-export pseudonyms, no rater id, no session,
    no IP hash) of every shard, written only when a visitor asks for it; above SYNC_UP_TO votes at
    most as often as a board is recomputed (`Boards.export`)."""
    return boards(store).export()


def _write_export(store: VoteStore) -> Path:
    """A fresh export in its own scratch folder, streamed a shard at a time."""
    folder = scratch_folder("votes-")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"votes-{stamp}.csv"
    with open(path, "wb") as handle:
        handle.writelines(anonymous_lines(store.iter_rows()))
    return path


REFRESH_VOTES = 1000
REFRESH_SECONDS = 60.0
"""A cached board is recomputed (in the background) once this many votes arrived or this many
seconds passed since its estimate, whichever comes first."""
SYNC_UP_TO = 20_000
"""Up to this many stored votes a board is recomputed whenever a vote arrived (tens of ms), so a
small study always shows its latest vote; above, the cached estimate is served."""


def refresh_rule(votes: int) -> str:
    """When a board from this many votes is computed again (said under the board)."""
    if votes < SYNC_UP_TO:
        return "recomputed with each new vote"
    return f"recomputed after {REFRESH_VOTES} more votes or {REFRESH_SECONDS:.0f} s"


def _due(estimate: Estimate, total: int) -> bool:
    """Whether an estimate from fewer than `total` votes is due for recomputation (above SYNC_UP_TO)."""
    age = (datetime.now(timezone.utc) - estimate.at).total_seconds()
    return estimate.votes != total and (total - estimate.votes >= REFRESH_VOTES or age >= REFRESH_SECONDS)


@dataclass
class Estimate:
    value: object
    votes: int
    """Votes in the store when it was computed."""
    at: datetime


class Boards:
    """The Leaderboard tab's numbers per filter, cached: a request reads the latest estimate and
    at most starts its recomputation in a background thread, so no request waits on a bootstrap
    over a large store (only the very first request of a filter computes in place)."""

    def __init__(self, store: VoteStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: dict[tuple, Estimate] = {}
        self._running: set[tuple] = set()
        self._export_lock = threading.Lock()
        self._export: Estimate | None = None

    def get(self, key: tuple) -> Estimate:
        total = self.store.refresh()
        with self._lock:
            cached = self._cache.get(key)
        if cached is None or (cached.votes != total and total <= SYNC_UP_TO):
            return self._compute(key)
        if _due(cached, total):
            self.refresh_later(key)
        return cached

    def export(self) -> Path:
        """The public CSV, one export at a time. Up to SYNC_UP_TO votes every request gets a fresh
        one (its own pseudonyms); above, the latest is handed out again until it is due by the
        board's rule, so a script asking again and again reads a large store once a minute at most."""
        total = self.store.refresh()
        with self._export_lock:
            cached = self._export
            if cached is None or not cached.value.exists() or total <= SYNC_UP_TO or _due(cached, total):
                cached = self._export = Estimate(_write_export(self.store), total, datetime.now(timezone.utc))
            return cached.value

    def refresh_later(self, key: tuple) -> None:
        """Recompute in a background thread (one per key at a time)."""
        with self._lock:
            if key in self._running:
                return
            self._running.add(key)
        threading.Thread(target=self._compute, args=(key,), daemon=True, name=f"board-{key}").start()

    def _compute(self, key: tuple) -> Estimate:
        try:
            kind, cells, leave_out = key
            with self.store.locked_index() as index:
                tally, total = index.tally(cells), len(index)
            if kind == "sources":
                value: object = stats.source_table_of(tally)
            else:
                left_out = 0
                if leave_out:
                    tally, left_out = stats.without_flagged_of(tally)
                result = stats.leaderboard_of(tally)
                value = (result, left_out, heatmap(result.methods, result.rates) if result.methods else None)
            estimate = Estimate(value, total, datetime.now(timezone.utc))
            with self._lock:
                if key not in self._cache or self._cache[key].votes <= total:
                    self._cache[key] = estimate
            return estimate
        finally:
            with self._lock:
                self._running.discard(key)


_BOARDS: weakref.WeakKeyDictionary[VoteStore, Boards] = weakref.WeakKeyDictionary()
_BOARDS_LOCK = threading.Lock()


def boards(store: VoteStore) -> Boards:
    """The store's board cache (one per store)."""
    with _BOARDS_LOCK:
        if store not in _BOARDS:
            _BOARDS[store] = Boards(store)
        return _BOARDS[store]


def _key(kind: str, mode_filter: str, source_filter: str, leave_out_flagged: bool = False) -> tuple:
    """A cache key from the filters' labels (an unknown label means all, as before: the key space
    stays bounded whatever a client sends)."""
    mode, source = MODE_FILTERS.get(mode_filter), SOURCE_FILTERS.get(source_filter)
    cells = tuple(sorted(cell_of(m, s) for m in ([mode] if mode else MODES) for s in ([source] if source else SOURCES)))
    return kind, cells, bool(leave_out_flagged) and kind == "board"


def open_store(folder: str | os.PathLike) -> VoteStore:
    """The app's vote store: the Hub dataset's shards restored first (when $HARMONY_VOTES_DATASET
    is set), this process's shard pushed from now on. Its index loads on first use, or in the
    background from `load_in_background`."""
    restore_shards(folder)
    store = VoteStore(folder)
    start_hub_sync(store)  # its thread pushes until exit
    return store


def load_in_background(store: VoteStore, limiter: raters.RateLimiter, leave_out_flagged: bool = False) -> None:
    """Index every shard in a thread (a million votes take seconds), so serving starts at once: a
    request that reads the store meanwhile waits for it (every read catches up under the store's
    lock), and votes wait until the last day's stored votes are counted in the limiter. Then the
    default board is computed."""
    limiter.expect_seed()
    threading.Thread(target=_load, args=(store, limiter, leave_out_flagged), daemon=True, name="votes-load").start()


def _load(store: VoteStore, limiter: raters.RateLimiter, leave_out_flagged: bool) -> None:
    try:
        seed_rate_limits(store, limiter)  # reads every shard into the index first
    except Exception:  # a broken store must not hold votes: requests report its error themselves
        log.exception("loading the votes failed")
        limiter.seed_votes(())
        return
    warm_board(store, leave_out_flagged)


def seed_rate_limits(store: VoteStore, limiter: raters.RateLimiter) -> None:
    """Count the last day's stored votes in the limiter (at start-up: a restart resets no quota)."""
    with store.locked_index() as index:
        recent = index.since(time.time() - raters.DAY)
    limiter.seed_votes(recent)


def warm_board(store: VoteStore, leave_out_flagged: bool = False) -> None:
    """Start computing the default board in the background (at start-up, before the first visitor)."""
    boards(store).refresh_later(_key("board", "All votes", "Study set", leave_out_flagged))


def board(store: VoteStore, mode_filter: str = "All votes", source_filter: str = "Study set",
          leave_out_flagged: bool = False) -> tuple[str, stats.Leaderboard, Figure | None]:
    """(headline Markdown, the statistics, the heatmap) for the chosen votes; leave_out_flagged:
    the organiser's choice to count no vote of a flagged source (stats.source_table)."""
    estimate = boards(store).get(_key("board", mode_filter, source_filter, leave_out_flagged))
    result, left_out, figure = estimate.value
    if not result.methods:
        note = "No votes match these filters yet." if estimate.votes else "No votes yet: vote in the **Blind study** tab."
        return note, result, None
    lines = [result.headline,
             f"{result.votes} vote(s) from {result.sources} source(s) ({result.raters} rater id(s)); a source is one "
             f"network address, and all its votes count as one cluster however many rater ids it used. The *score* "
             f"says how strongly people prefer a method over the others (0 = average, higher = picked more often), "
             f"with the range it would likely fall in had other people voted (none below {stats.MIN_SOURCES} sources); "
             f"*rank* is a range where those ranges overlap; *provisional* = fewer than {stats.PROVISIONAL_BELOW} "
             f"votes showed the method, or fewer than {stats.MIN_SOURCES} sources voted.",
             "<details><summary>details</summary>\n\nThe score (BT score) is a Bradley-Terry log-strength (mean 0), "
             "fitted to every comparison the votes imply; its range (BT 95% CI) is a 95% bootstrap interval over "
             "sources (the fit repeated on sources drawn again with replacement). Win share has a Wilson 95% interval."
             "\n\n</details>",
             f"*Estimate of {estimate.at:%Y-%m-%d %H:%M:%S} UTC* (from the {estimate.votes} votes stored then; "
             f"{refresh_rule(estimate.votes)})."]
    if left_out:
        lines.append(f"{left_out} flagged source(s) left out (see *Sources*).")
    return "\n\n".join(lines), result, figure


def pair_board(store: VoteStore, mode_filter: str = "All votes", source_filter: str = "Study set",
               leave_out_flagged: bool = False) -> pd.DataFrame:
    """Per pair of methods: comparisons, win rate, and how many more votes would separate them."""
    return boards(store).get(_key("board", mode_filter, source_filter, leave_out_flagged)).value[0].pairs


def sources_board(store: VoteStore, mode_filter: str = "All votes", source_filter: str = "Study set") -> pd.DataFrame:
    """The organiser's Sources table for the chosen votes (every source, flagged ones included)."""
    return boards(store).get(_key("sources", mode_filter, source_filter)).value
