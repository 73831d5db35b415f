"""The Blind study and Leaderboard tabs' logic: rounds, votes, the board. No Gradio here."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL.PngImagePlugin import PngInfo

from harmony_core import imaging
from harmony_core.errors import InputError
from harmony_core.studio.serving import scratch_folder
from harmony_core.study import stats
from harmony_core.study.studyset import (
    LETTERS, MAX_SHOWN, Round, StudySample, StudySet, next_round, sample_id, user_round,
)
from harmony_core.study.votes import DuplicateVote, Vote, VoteStore, ip_hash

CANT_DECIDE = "Can't decide"
MODE_LABELS = {"Best of all (A-D)": "best_of_n", "Pairwise (A/B)": "pairwise"}
FAST_VOTE_MS = 1000
"""Votes quicker than this get the flag `fast` (an organizer may want to look at them)."""


def new_rater_id() -> str:
    return "r-" + uuid.uuid4().hex[:16]


@dataclass
class RoundState:
    """Kept server-side per browser session (gr.State): the client never sees the method names
    before voting."""

    round: Round
    shown_at: float
    voted: bool = False


@dataclass
class RoundView:
    images: list[str | None]
    """MAX_SHOWN slots: an image path, or None for an unused slot."""
    captions: list[str]
    message: str


QUESTION = f"Which looks most natural, as if the object had been photographed in this scene? Pick one, or *{CANT_DECIDE}*."


def _images(rnd: Round) -> list[str | None]:
    return [str(rnd.sample.outputs[m]) for m in rnd.shown] + [None] * (MAX_SHOWN - len(rnd.shown))


def start_round(study: StudySet, store: VoteStore, rater_id: str, mode_label: str) -> tuple[RoundState | None, RoundView]:
    """The next round for this rater, or a thank-you when every sample has their vote."""
    mode = MODE_LABELS.get(mode_label, mode_label)
    rnd = next_round(study, mode, store.voted_samples(rater_id, mode))
    if rnd is None:
        return None, RoundView([None] * MAX_SHOWN, list(LETTERS),
                               f"Thank you: you have voted on all {len(study.samples)} images in this mode.")
    return RoundState(rnd, time.monotonic()), RoundView(_images(rnd), list(LETTERS), QUESTION)


def start_user_round(composite: np.ndarray | None, mask: np.ndarray | None, outputs: dict[str, np.ndarray] | None,
                     store: VoteStore, rater_id: str, mode_label: str) -> tuple[RoundState, RoundView]:
    """A blind round over the rater's own Compare results; the vote is recorded as sample_source "user".

    The outputs are written to a scratch folder so the round shows files like a study round: random
    names, and a random text chunk in each PNG so that its bytes (hence Gradio's cache URL) differ
    from the named Compare gallery's. The rater has seen these results with their names in
    Compare, so the Leaderboard keeps such votes apart by source.
    """
    if composite is None or mask is None or not outputs:
        raise InputError("Run two or more methods in **Compare** (and let the run finish), then vote blind on their results.")
    mode = MODE_LABELS.get(mode_label, mode_label)
    sid = sample_id(composite, mask)
    if sid in store.voted_samples(rater_id, mode, source="user"):
        raise InputError("You have already voted on this composite in this mode.")
    rnd = user_round(StudySample(sid, "your composite", Path(), Path(), dict.fromkeys(outputs, Path())), mode)
    folder = scratch_folder("blind-")
    nonce = PngInfo()
    nonce.add_text("round", uuid.uuid4().hex)
    files = {name: imaging.save_image(image, folder / f"{uuid.uuid4().hex}.png", pnginfo=nonce)
             for name, image in outputs.items()}
    rnd.sample = StudySample(sid, "your composite", imaging.save_image(composite, folder / "composite.png"),
                             imaging.save_image(mask, folder / "mask.png"), files)
    return RoundState(rnd, time.monotonic()), RoundView(_images(rnd), list(LETTERS), f"Your composite. {QUESTION}")


def cast_vote(state: RoundState | None, choice: str, store: VoteStore, rater_id: str, session_hash: str,
              client_ip: str | None, secret: bytes) -> RoundView:
    """Record the vote (exactly once) and reveal which method was behind each letter."""
    if state is None:
        raise InputError("Start a round first (press **Next image**).")
    if state.voted:
        raise InputError("This round's vote is already recorded; press **Next image**.")
    rnd = state.round
    if choice == CANT_DECIDE:
        position = None
    elif choice in rnd.labels:
        position = rnd.labels.index(choice)
    else:
        raise InputError(f"'{choice}' is not one of the images shown.")
    latency = round(1000 * (time.monotonic() - state.shown_at))
    flags = [f"seed={rnd.seed}"] + (["fast"] if latency < FAST_VOTE_MS else [])
    try:
        store.append(Vote(
            mode=rnd.mode, sample_id=rnd.sample.id, sample_source=rnd.source, shown_order=rnd.shown,
            choice_pos=position, rater_id=rater_id, session_hash=session_hash or "",
            ip_hash=ip_hash(client_ip, secret), latency_ms=latency, flags=flags,
        ))
    except DuplicateVote:
        state.voted = True  # voted on this image before (another tab): this round is over too
        raise
    state.voted = True
    captions = [f"{letter} · {method}" + (" ✓ your pick" if i == position else "")
                for i, (letter, method) in enumerate(zip(rnd.labels, rnd.shown))]
    captions += list(LETTERS[len(captions):])
    picked = "you could not decide" if position is None else f"you picked {rnd.labels[position]} ({rnd.shown[position]})"
    return RoundView(_images(rnd), captions, f"Recorded: {picked}. Press **Next image** for another.")


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
    """A copy of the raw votes CSV (complete lines) in a fresh temporary folder, to download."""
    folder = scratch_folder("votes-")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"votes-{stamp}.csv"
    path.write_bytes(store.complete_bytes())
    return path


def board(store: VoteStore, mode_filter: str = "All votes",
          source_filter: str = "Study set") -> tuple[str, stats.Leaderboard, Figure | None]:
    """(headline Markdown, the statistics, the heatmap) for the chosen votes."""
    every = votes = store.frame()
    for column, value in (("mode", MODE_FILTERS.get(mode_filter)), ("sample_source", SOURCE_FILTERS.get(source_filter))):
        if value is not None:
            votes = votes[votes[column] == value]
    result = stats.leaderboard(votes)
    if not result.methods:
        note = "No votes match these filters yet." if len(every) else "No votes yet: vote in the **Blind study** tab."
        return note, result, None
    lines = [result.headline,
             f"{result.votes} vote(s) from {result.raters} rater(s). Scores: Bradley-Terry log-strength (mean 0) "
             f"with a 95% bootstrap interval over raters; *provisional* = fewer than {stats.PROVISIONAL_BELOW} "
             "decided votes showed the method."]
    return "\n\n".join(lines), result, heatmap(result.methods, result.rates)
