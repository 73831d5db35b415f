"""The vote store: a folder of append-only CSV shards, safe under many processes and threads,
across restarts and after crashes.

Each process appends to its own shard, `<start-time>-<uuid>.csv` (an older version's single
`votes.csv` is read like any shard), so shards can be copied to and from a Hub dataset without
ever overwriting another process's votes. Every append takes the folder's file lock, catches up
on what every shard gained since (so a duplicate is caught across processes), writes the whole
row in one `write`, then fsyncs before the lock is released. Readers keep an index (index.py) up
to date from the bytes appended since their last look, so a vote or a round costs the same at a
million stored votes as at none. A crash can at worst leave one torn last line: readers skip it
with a warning, and the next append moves its bytes to `<shard>.torn` (nothing is thrown away)
and cuts the shard back to its last complete line, so no new row is ever glued onto a torn one
(the one rule of atomic.py, which evaluate's per-image CSV follows too).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import itertools
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock

from harmony_core import __version__, atomic, config
from harmony_core.arena.index import FIELDS, MODES, SOURCES, Coded, VoteIndex
from harmony_core.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = (
    "vote_id", "schema_version", "ts_utc", "app_version", "mode", "sample_id", "sample_source",
    "shown_order", "choice_pos", "winner_method", "rater_id", "session_hash", "ip_hash",
    "latency_ms", "flags",
)
SCHEMA_VERSION = "1"
VOTES_FILE = "votes.csv"
"""The single file older versions wrote; still read, never appended to."""
LOCK_FILE = ".votes.lock"
READ_BLOCK = 1 << 20
"""Bytes read at a time while catching up: bounds memory when a million votes are loaded (loading
a million, 1 MB blocks took 4.2 s and 112 MB more resident memory; 16 MB blocks 6.0 s and 254 MB)."""
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


def anonymous_csv(rows: Iterable[dict[str, str]]) -> bytes:
    """The votes as PUBLIC_COLUMNS, with pseudonyms keyed by a random key used for this export only."""
    return b"".join(anonymous_lines(rows))


def anonymous_lines(rows: Iterable[dict[str, str]]) -> Iterator[bytes]:
    """anonymous_csv line by line, so a large export can be streamed to a file."""
    key = secrets.token_bytes(32)

    def pseudonym(prefix: str, value: str) -> str:
        return prefix + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]

    yield _encode(PUBLIC_COLUMNS)
    for row in rows:
        public = {c: row[c] for c in COLUMNS}
        public["rater"] = pseudonym("r", row["rater_id"])
        public["source"] = pseudonym("s", source_of(row))
        yield _encode([public[c] for c in PUBLIC_COLUMNS])


def source_of(row: dict[str, str]) -> str:
    """Who is behind a vote, as far as the server can tell: its IP hash, else its rater id. Votes
    from one source are one cluster in the statistics (many rater ids can share one address)."""
    return ("ip:" + row["ip_hash"]) if row.get("ip_hash") else ("rater:" + row.get("rater_id", ""))


def load_secret(folder: str | os.PathLike) -> bytes:
    """The HMAC secret: $HARMONY_VOTE_SECRET, else `<folder>/.ip_hash_secret` (created 0600 once)."""
    secret = config.current().vote_secret
    if secret:
        return secret.encode()
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


HEADER = _encode(COLUMNS)
_INDEXED = [COLUMNS.index(c) for c in FIELDS]


def _fields(line: str) -> list[str] | None:
    """One physical line as the values of a vote row, or None when it is not a sound one (too
    long, not CSV, other columns, an unknown mode or source, a choice outside the shown methods
    or a winner that is not the chosen one). A line without quotes or NULs reads the same split
    on commas as through the csv module (the writer quotes nothing else), which is much faster."""
    if len(line) > MAX_LINE_BYTES:
        return None
    if '"' in line or "\0" in line:
        try:
            record = next(csv.reader([line]), [])
        except csv.Error:
            return None
    else:
        record = line.split(",")
    if len(record) != len(COLUMNS) or any(len(v) > MAX_FIELD_CHARS for v in record):
        return None
    _, schema, _, _, mode, _, sample_source, order, choice, winner = record[:10]
    if schema != SCHEMA_VERSION or mode not in MODES or sample_source not in SOURCES or not _choice_ok(order, choice, winner):
        return None
    return record


def _parse(lines: bytes, where: str) -> list[list[str]]:
    """The sound rows of complete lines (header skipped); malformed lines are counted in a warning.

    Every row is one physical line (the writer guarantees it), so each line is parsed alone: a
    hostile or broken line costs only itself."""
    records, bad = [], 0
    header = HEADER.decode().rstrip("\n")
    for line in lines.decode("utf-8", errors="replace").split("\n"):
        line = line.rstrip("\r")
        if not line or line == header:
            continue
        record = _fields(line)
        if record is None:
            bad += 1
        else:
            records.append(record)
    if bad:
        log.warning("%s: %d malformed line(s) skipped", where, bad)
    return records


def _columns(block: bytes, where: str) -> list[list[str] | Coded]:
    """The FIELDS columns of the sound rows of complete lines: what `_parse` keeps, read in bulk
    (the index's start-up over a million votes). Plain lines (no quote, no NUL, exactly the
    columns' commas, too short for a field to be too long) are joined and split on commas at once,
    then checked a column at a time, each distinct value once; any other line goes through
    `_fields` alone."""
    lines = block.decode("utf-8", errors="replace").split("\n")
    if b"\r" in block:
        lines = [line.rstrip("\r") for line in lines]
    header, commas = HEADER.decode().rstrip("\n"), len(COLUMNS) - 1
    plain = [line for line in lines if len(line) <= MAX_FIELD_CHARS and line.count(",") == commas
             and '"' not in line and "\0" not in line and line != header]
    flat = ",".join(plain).split(",") if plain else []
    columns = [flat[i::len(COLUMNS)] for i in range(len(COLUMNS))]
    bad = 0
    if len(plain) + lines.count("") + lines.count(header) < len(lines):  # some lines need the careful reader
        other = [_fields(line) for line in lines if line and line != header and not (
            len(line) <= MAX_FIELD_CHARS and line.count(",") == commas and '"' not in line and "\0" not in line)]
        bad = sum(r is None for r in other)
        for record in (r for r in other if r is not None):
            for column, value in zip(columns, record):
                column.append(value)
    coded = {i: Coded.of(columns[i]) for i in (1, 4, 6, 7, 8, 9)}
    sound = _sound(coded) if columns[0] else np.ones(0, bool)
    bad += int((~sound).sum())
    if bad:
        log.warning("%s: %d malformed line(s) skipped", where, bad)
    if not sound.all():  # the index codes the kept values afresh
        return [list(itertools.compress(columns[i], sound)) for i in _INDEXED]
    return [coded.get(i, columns[i]) for i in _INDEXED]


def _sound(coded: dict[int, Coded]) -> np.ndarray:
    """Per row: `_fields`' checks of the values (schema, mode, source, choice and winner), each
    distinct value or (shown order, choice, winner) combination checked once."""
    sound = np.ones(len(coded[1]), bool)
    for i, allowed in ((1, (SCHEMA_VERSION,)), (4, MODES), (6, SOURCES)):
        sound &= np.array([u in allowed for u in coded[i].uniques], bool)[coded[i].codes]
    orders, choices, winners = coded[7], coded[8], coded[9]
    n_choices, n_winners = len(choices.uniques), len(winners.uniques)
    combined = (orders.codes.astype(np.int64) * n_choices + choices.codes) * n_winners + winners.codes
    combos, inverse = np.unique(combined, return_inverse=True)
    ok = np.array([_choice_ok(orders.uniques[c // (n_choices * n_winners)], choices.uniques[c // n_winners % n_choices],
                              winners.uniques[c % n_winners]) for c in combos], bool)
    return sound & ok[inverse.ravel()]


def _choice_ok(order: str, choice: str, winner: str) -> bool:
    shown = order.split(";")
    return (len(shown) >= 2 and (not choice or (choice.isdigit() and int(choice) < len(shown)))
            and winner == (shown[int(choice)] if choice else ""))


def shard_name() -> str:
    """A new shard's name: its start time (shards sort by age) and a uuid (unique per process)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex}.csv"


def shards(folder: str | os.PathLike) -> list[Path]:
    """Every votes file of the folder: the old single votes.csv first, then the shards by age."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.csv") if p.is_file()), key=lambda p: (p.name != VOTES_FILE, p.name))


class VoteStore:
    """The votes of one folder (all its shards); this process appends to its own shard `path`.
    Safe to share between threads and processes."""

    def __init__(self, folder: str | os.PathLike, lock_timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / shard_name()
        self.torn_path = self.path.with_suffix(atomic.TORN_SUFFIX)
        self._file_lock = FileLock(str(self.folder / LOCK_FILE), timeout=lock_timeout)
        self._thread_lock = threading.RLock()
        self.push_lock: threading.Lock | None = None
        """The Hub scheduler's lock (hub.start_hub_sync sets it): held while a row is written, so a
        push never lists a shard in the middle of one."""
        self._offsets: dict[str, int] = {}
        self.index = VoteIndex()

    # --- writing ------------------------------------------------------------------------------

    def append(self, vote: Vote) -> dict[str, str]:
        """Record a vote exactly once; DuplicateVote if (rater, sample, mode, source) already voted
        (in any shard, by any process)."""
        row = vote.row()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self.push_lock or nullcontext(), self._file_lock:
            self._catch_up(repair=True)
            if self.index.voted(row["rater_id"], row["sample_id"], row["mode"], row["sample_source"]):
                raise DuplicateVote("You already voted on this image in this mode; the repeated vote was not recorded.")
            offset = self._offsets.get(self.path.name, 0)
            data = _encode([row[c] for c in COLUMNS])
            if offset == 0:
                data = HEADER + data
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._offsets[self.path.name] = offset + len(data)
            self.index.extend([[row[c]] for c in FIELDS])
        return row

    # --- catching up ----------------------------------------------------------------------------

    def refresh(self) -> int:
        """Bring the index up to date with every shard (only the bytes new since the last look);
        returns the number of votes indexed. The first call loads the store (start-up)."""
        with self._thread_lock:
            self._catch_up(repair=False)
            return len(self.index)

    def _catch_up(self, repair: bool) -> None:
        """Index what every shard gained since our last look. repair (only under the file lock):
        set a torn tail aside, as a writer must before it appends."""
        for path in shards(self.folder):
            size = path.stat().st_size
            offset = self._offsets.get(path.name, 0)
            if size < offset:  # a shard was replaced behind our back: read everything again
                self._offsets, self.index = {}, VoteIndex()
                self._catch_up(repair)
                return
            if size > offset:
                offset = self._read(path, offset, size)
                self._offsets[path.name] = offset
            if repair and offset < size:
                atomic.set_aside_torn_tail(path, offset)

    def _read(self, path: Path, offset: int, size: int) -> int:
        """Index the complete lines of path[offset:size], a block at a time; returns the offset
        after the last complete line (a torn tail stays unread)."""
        with open(path, "rb") as handle:
            while offset < size:
                handle.seek(offset)
                block = handle.read(min(READ_BLOCK, size - offset))
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # no newline in a whole block: one over-long line, or the torn tail
                    rest = _skip_line(handle)
                    if rest is None:
                        break
                    log.warning("%s: 1 malformed line(s) skipped", path)
                    offset += len(block) + rest
                    continue
                if offset == 0 and not block.startswith(HEADER):
                    log.warning("%s does not start with the votes header; its lines are checked one by one", path)
                self.index.extend(_columns(block[:cut], str(path)))
                offset += cut
        return offset

    # --- reading ------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, str]]:
        """Every well-formed vote of every shard; torn or malformed lines are skipped with a warning."""
        return list(self.iter_rows())

    def iter_rows(self) -> Iterator[dict[str, str]]:
        """rows(), one shard at a time (for exports: the votes are never all in memory as dicts)."""
        for path in shards(self.folder):
            data = atomic.complete_lines(path.read_bytes(), path)
            for record in _parse(data, str(path)):
                yield dict(zip(COLUMNS, record))

    def voted_samples(self, rater_id: str, mode: str, source: str = "study") -> set[str]:
        """Samples this rater already voted on in this mode and source (to pick the next round):
        the rater's own votes in the index, whatever the store holds."""
        with self._thread_lock:
            self._catch_up(repair=False)
            return self.index.voted_samples(neutralize(rater_id), mode, source)

    @contextmanager
    def locked_index(self) -> Iterator[VoteIndex]:
        """The index brought up to date, with the store's thread lock held while the caller reads it."""
        with self._thread_lock:
            self._catch_up(repair=False)
            yield self.index


def _skip_line(handle) -> int | None:
    """Bytes up to and including the next newline from the handle's position, or None if the file
    ends first (a torn tail)."""
    skipped = 0
    while True:
        block = handle.read(READ_BLOCK)
        if not block:
            return None
        cut = block.find(b"\n")
        if cut >= 0:
            return skipped + cut + 1
        skipped += len(block)
