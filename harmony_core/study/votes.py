"""The vote store: one append-only CSV, safe under many processes and threads and after crashes.

Every append takes a file lock, re-reads what other processes appended since (so duplicates are
caught across processes), writes the whole row in one `write`, then flushes and fsyncs before
the lock is released. A crash can at worst leave one torn last line: readers skip it with a
warning, and the next append moves its bytes to `<votes>.torn` (nothing is thrown away) and cuts
the CSV back to its last complete line, so no new row is ever glued onto a torn one (the one
rule of atomic.py, which evaluate's per-image CSV follows too).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import os
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock

from harmony_core import __version__, atomic
from harmony_core.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = (
    "vote_id", "schema_version", "ts_utc", "app_version", "mode", "sample_id", "sample_source",
    "shown_order", "choice_pos", "winner_method", "rater_id", "session_hash", "ip_hash",
    "latency_ms", "flags",
)
SCHEMA_VERSION = "1"
MODES = ("best_of_n", "pairwise")
"""How a round shows its outputs (best of up to 4, or a pair): the one list for votes and rounds."""
SOURCES = ("study", "user")
VOTES_FILE = "votes.csv"
SECRET_FILE = ".ip_hash_secret"
SECRET_ENV = "HARMONY_VOTE_SECRET"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_FIELD_CHARS = 512
"""Longest value any column may hold (shown_order of four method names fits easily); longer
values are refused on write, so a hostile client cannot grow a row."""
MAX_LINE_BYTES = 16 * MAX_FIELD_CHARS
"""Longer physical lines (only a foreign or older file can hold them) are skipped unparsed, so
Python's csv field size limit is never reached."""


class DuplicateVote(InputError):
    """This rater already voted on this sample in this mode; the vote is not recorded."""


def neutralize(value: object) -> str:
    """A cell a spreadsheet shows as text: no leading formula character, no line breaks.

    Line breaks are replaced too, so every row is exactly one physical line (the torn-line
    detection depends on it).
    """
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    return text.replace("\r", " ").replace("\n", " ")


def ip_hash(ip: str | None, secret: bytes) -> str:
    """HMAC-SHA256 of the client IP: lets an organizer spot ballot stuffing without storing IPs."""
    if not ip:
        return ""
    return hmac.new(secret, ip.encode(), hashlib.sha256).hexdigest()[:32]


def session_key(session_hash: str | None, secret: bytes) -> str:
    """What the store keeps of a Gradio session hash: a keyed hash, so no file (the organiser's
    included) holds a value that could address a live session's state."""
    if not session_hash:
        return ""
    key = hmac.new(secret, b"session", hashlib.sha256).digest()
    return hmac.new(key, str(session_hash)[:MAX_FIELD_CHARS].encode(), hashlib.sha256).hexdigest()[:16]


PUBLIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("rater_id", "session_hash", "ip_hash")) + ("rater", "source")
"""The published CSV: no rater id (a bearer token), no session hash, no server-keyed IP hash; `rater`
and `source` (the IP hash, or the rater where none was recorded) are pseudonyms drawn afresh for
each export, so two exports cannot be joined on them and nothing in them addresses a session."""


def anonymous_csv(rows: list[dict[str, str]]) -> bytes:
    """The votes as PUBLIC_COLUMNS, with pseudonyms keyed by a random key used for this export only."""
    key = secrets.token_bytes(32)

    def pseudonym(prefix: str, value: str) -> str:
        return prefix + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]

    lines = [_encode(PUBLIC_COLUMNS)]
    for row in rows:
        public = {c: row[c] for c in COLUMNS}
        public["rater"] = pseudonym("r", row["rater_id"])
        public["source"] = pseudonym("s", source_of(row))
        lines.append(_encode([public[c] for c in PUBLIC_COLUMNS]))
    return b"".join(lines)


def source_of(row: dict[str, str]) -> str:
    """Who is behind a vote, as far as the server can tell: its IP hash, else its rater id. Votes
    from one source are one cluster in the statistics (many rater ids can share one address)."""
    return ("ip:" + row["ip_hash"]) if row.get("ip_hash") else ("rater:" + row.get("rater_id", ""))


def load_secret(folder: str | os.PathLike) -> bytes:
    """The HMAC secret: $HARMONY_VOTE_SECRET, else `<folder>/.ip_hash_secret` (created 0600 once)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    path = Path(folder) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=30):
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
    return path.read_text().strip().encode()


@dataclass
class Vote:
    """One vote as the UI knows it; `VoteStore.append` adds ids, time and version."""

    mode: str
    sample_id: str
    sample_source: str
    shown_order: list[str]
    choice_pos: int | None
    """Index into shown_order (0 = the image labelled A); None for "can't decide"."""
    rater_id: str
    session_hash: str = ""
    ip_hash: str = ""
    latency_ms: int | None = None
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"Unknown vote mode '{self.mode}' (expected one of {', '.join(MODES)}).")
        if self.sample_source not in SOURCES:
            raise InputError(f"Unknown sample source '{self.sample_source}'.")
        if len(self.shown_order) < 2:
            raise InputError("A vote needs at least two shown methods.")
        if self.choice_pos is not None and not 0 <= self.choice_pos < len(self.shown_order):
            raise InputError(f"Choice {self.choice_pos} is not one of the {len(self.shown_order)} shown images.")
        if not self.rater_id:
            raise InputError("A vote needs a rater id.")
        for name, value in self.row().items():
            if len(value) > MAX_FIELD_CHARS:
                raise InputError(f"The vote's {name} is longer than {MAX_FIELD_CHARS} characters; it was not recorded.")

    @property
    def winner(self) -> str:
        return "" if self.choice_pos is None else self.shown_order[self.choice_pos]

    def row(self) -> dict[str, str]:
        values = {
            "vote_id": uuid.uuid4().hex,
            "schema_version": SCHEMA_VERSION,
            "ts_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "app_version": __version__,
            "mode": self.mode,
            "sample_id": self.sample_id,
            "sample_source": self.sample_source,
            "shown_order": ";".join(self.shown_order),
            "choice_pos": "" if self.choice_pos is None else str(self.choice_pos),
            "winner_method": self.winner,
            "rater_id": self.rater_id,
            "session_hash": self.session_hash,
            "ip_hash": self.ip_hash,
            "latency_ms": "" if self.latency_ms is None else str(max(0, int(self.latency_ms))),
            "flags": ";".join(self.flags),
        }
        return {k: neutralize(v) for k, v in values.items()}


def _encode(values: list[str] | tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def _record(line: bytes) -> dict[str, str] | None:
    """One physical line as a vote row, or None when it is not a sound one (too long, not CSV,
    other columns, an unknown mode or source, a choice outside the shown methods or a winner
    that is not the chosen one)."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        record = next(csv.reader([line.decode("utf-8", errors="replace")]), [])
    except csv.Error:
        return None
    if len(record) != len(COLUMNS) or any(len(v) > MAX_FIELD_CHARS for v in record):
        return None
    row = dict(zip(COLUMNS, record))
    shown = row["shown_order"].split(";")
    choice = row["choice_pos"]
    if (row["schema_version"] != SCHEMA_VERSION or row["mode"] not in MODES or row["sample_source"] not in SOURCES
            or len(shown) < 2 or (choice and not (choice.isdigit() and int(choice) < len(shown)))
            or row["winner_method"] != (shown[int(choice)] if choice else "")):
        return None
    return row


def _parse(lines: bytes, where: str) -> tuple[list[dict[str, str]], int]:
    """Well-formed rows of complete lines (header skipped) and the number of malformed lines.

    Every row is one physical line (the writer guarantees it), so each line is parsed alone: a
    hostile or broken line costs only itself."""
    rows, bad = [], 0
    header = _encode(COLUMNS).rstrip(b"\n")
    for line in lines.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line or line == header:
            continue
        row = _record(line)
        if row is None:
            bad += 1
        else:
            rows.append(row)
    if bad:
        log.warning("%s: %d malformed line(s) skipped", where, bad)
    return rows, bad


class VoteStore:
    """The votes CSV of one folder. Safe to share between threads and processes."""

    def __init__(self, folder: str | os.PathLike, lock_timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / VOTES_FILE
        self.torn_path = self.path.with_suffix(atomic.TORN_SUFFIX)
        self._file_lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)
        self._thread_lock = threading.Lock()
        self._offset = 0
        self._keys: set[tuple[str, ...]] = set()

    # --- writing ------------------------------------------------------------------------------

    def append(self, vote: Vote) -> dict[str, str]:
        """Record a vote exactly once; DuplicateVote if (rater, sample, mode, source) already voted."""
        row = vote.row()
        key = _key(row)
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self._file_lock:
            self._catch_up()
            if key in self._keys:
                raise DuplicateVote("You already voted on this image in this mode; the repeated vote was not recorded.")
            data = _encode([row[c] for c in COLUMNS])
            if self._offset == 0:
                data = _encode(COLUMNS) + data
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._offset += len(data)
            self._keys.add(key)
        return row

    def _catch_up(self) -> None:
        """Read what was appended since our last look (under the lock); repair a torn tail."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < self._offset:  # the file was replaced behind our back: start over
            self._offset, self._keys = 0, set()
        if size == self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(size - self._offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # the torn tail, if any, is set aside below
        if self._offset == 0 and complete and not complete.startswith(_encode(COLUMNS)):
            raise InputError(f"{self.path} is not a votes file of this version (other columns); move it away.")
        rows, _ = _parse(complete, str(self.path))
        self._keys.update(_key(r) for r in rows)
        self._offset += len(complete)
        if len(complete) < len(chunk):
            atomic.set_aside_torn_tail(self.path, self._offset)

    # --- reading ------------------------------------------------------------------------------

    def complete_bytes(self) -> bytes:
        """The file up to its last complete line (a torn last line is skipped with a warning)."""
        if not self.path.exists():
            return b""
        with self._thread_lock, self._file_lock:
            data = self.path.read_bytes()
        return atomic.complete_lines(data, self.path)

    def rows(self) -> list[dict[str, str]]:
        """Every well-formed vote; torn or malformed lines are skipped with a warning."""
        return _parse(self.complete_bytes(), str(self.path))[0]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def voted_samples(self, rater_id: str, mode: str, source: str = "study") -> set[str]:
        """Samples this rater already voted on in this mode and source (to pick the next round)."""
        rater = neutralize(rater_id)
        return {r["sample_id"] for r in self.rows()
                if r["rater_id"] == rater and r["mode"] == mode and r["sample_source"] == source}


def _key(row: dict[str, str]) -> tuple[str, str, str, str]:
    """One vote per rater, sample, mode and source: a study image the rater also ran through Compare
    (sample_source "user") is a separate trial with the same sample_id."""
    return (row["rater_id"], row["sample_id"], row["mode"], row["sample_source"])


def start_hub_sync(folder: str | os.PathLike):
    """Push the votes CSV to a Hub dataset every few minutes, when $HARMONY_VOTES_DATASET is set.

    Only `votes.csv` is uploaded (never the HMAC secret or the lock). A push that catches a row
    mid-write uploads a torn last line, which readers skip and the next push replaces.
    Returns the CommitScheduler, or None when not configured.
    """
    repo_id = os.environ.get("HARMONY_VOTES_DATASET")
    if not repo_id:
        return None
    from huggingface_hub import CommitScheduler

    minutes = float(os.environ.get("HARMONY_VOTES_SYNC_MINUTES", "5"))
    log.info("syncing %s to the Hub dataset %s every %g min", folder, repo_id, minutes)
    return CommitScheduler(
        repo_id=repo_id, repo_type="dataset", folder_path=folder, path_in_repo="votes",
        every=minutes, allow_patterns=[VOTES_FILE], private=True,
    )
