"""Who may vote, and how often: server-issued signed rater ids and per-rater / per-IP rate limits.

A rater id is `r-` + 16 random hex digits + `-` + 24 hex digits of HMAC-SHA256 over the random
part, keyed with a key derived from the server secret. Only the server can mint one, so nobody
can vote (or use up someone's rounds) under an id they were not given, and a forged or
oversized id is refused before it reaches the vote store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harmony_core import config
from harmony_core.errors import InputError

RATER_ID_LENGTH = 43
RATER_ID = re.compile(r"r-([0-9a-f]{16})-([0-9a-f]{24})")
NOT_ISSUED = ("This rater id was not issued by this server (or was changed). Reload the page, or send an "
              "empty rater id to /study_next to get a new one.")


def _signature(nonce: str, secret: bytes) -> str:
    key = hmac.new(secret, b"rater-id", hashlib.sha256).digest()  # never the IP-hash key itself
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()[:24]


def issue_rater_id(secret: bytes) -> str:
    """A fresh rater id signed with the server secret."""
    nonce = secrets.token_hex(8)
    return f"r-{nonce}-{_signature(nonce, secret)}"


def is_issued(rater_id: object, secret: bytes) -> bool:
    """True for an id this server signed (length and alphabet checked before any HMAC)."""
    if not isinstance(rater_id, str) or len(rater_id) != RATER_ID_LENGTH:
        return False
    match = RATER_ID.fullmatch(rater_id)
    return bool(match) and hmac.compare_digest(match.group(2), _signature(match.group(1), secret))


def verified_rater_id(rater_id: object, secret: bytes) -> str:
    """The id itself when this server issued it; otherwise an InputError that says what to do."""
    if not is_issued(rater_id, secret):
        raise InputError(NOT_ISSUED)
    return str(rater_id)


class RateLimited(InputError):
    """Too many votes, new rater ids or rounds without a vote from one rater or one IP hash in the
    window; nothing was recorded or started."""


@dataclass(frozen=True)
class RateLimits:
    """Per key (a rater id, an IP hash) and window; 0 = no limit.

    Votes: in the spirit of public arenas, a person reads a round in a few seconds at least, and
    a study session is rarely longer than a few hundred rounds. New rater ids: a household or a
    classroom behind one address needs a few, a ballot stuffer needs many. Rounds without a vote
    (skipped, or abandoned): each one writes a round's blind copies, so they are what bounds the
    disk a visitor can fill."""

    per_minute: int = 30
    per_day: int = 1000
    new_ids_per_day: int = 20
    unvoted_rounds_per_minute: int = 20
    unvoted_rounds_per_day: int = 300


MINUTE, DAY = 60.0, 86400.0


class _Windows:
    """Sliding-window counters of one kind of event per key: the times of the last day's events."""

    def __init__(self, caps: tuple[tuple[str, float, int], ...], message: str) -> None:
        self.caps = tuple(c for c in caps if c[2])
        self.message = message
        self.times: dict[str, deque[float]] = {}

    def check(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            times = self.times.setdefault(key, deque())
            while times and now - times[0] >= DAY:
                times.popleft()
            for name, seconds, cap in self.caps:
                if sum(1 for t in times if now - t < seconds) >= cap:
                    raise RateLimited(self.message.format(cap=cap, window=name))

    def count(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            self.times.setdefault(key, deque()).append(now)

    def uncount(self, key: str) -> None:
        times = self.times.get(key)
        if times:
            times.pop()


class RateLimiter:
    """The limits of RateLimits, as sliding windows in this process's memory. At start-up the app
    counts the last day's stored votes in again (`seed_votes`); new ids and rounds without a vote
    start afresh after a restart. Thread-safe."""

    SEED_WAIT_S = 120.0
    """Longest a vote waits for the stored votes to be counted (`expect_seed`)."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._seeded = threading.Event()
        self._seeded.set()
        self._votes = _Windows((("minute", MINUTE, limits.per_minute), ("day", DAY, limits.per_day)),
                               "Too many votes: at most {cap} a {window} from one rater or network. "
                               "Your vote was not recorded; please try again later.")
        self._ids = _Windows((("day", DAY, limits.new_ids_per_day),),
                             "Too many new rater ids: at most {cap} a {window} from one network. Keep using "
                             "the id this browser already has (it is kept across visits), or try again tomorrow.")
        self._rounds = _Windows((("minute", MINUTE, limits.unvoted_rounds_per_minute),
                                 ("day", DAY, limits.unvoted_rounds_per_day)),
                                "Too many rounds without a vote: at most {cap} a {window} from one network. "
                                "Vote on the images shown (or pick *Can't decide*), or try again later.")

    def _take(self, windows: _Windows, keys: tuple[str, ...]) -> None:
        keys = tuple(k for k in keys if k)
        now = self.clock()
        with self._lock:
            windows.check(keys, now)
            windows.count(keys, now)

    def take(self, *keys: str) -> None:
        """Count one vote for every non-empty key, or raise RateLimited (counting none) when any
        key has used up a window. Waits while the stored votes are being counted (`expect_seed`)."""
        self._seeded.wait(self.SEED_WAIT_S)
        self._take(self._votes, keys)

    def expect_seed(self) -> None:
        """Hold votes until `seed_votes` runs: the store counts its votes in the background at start-up."""
        self._seeded.clear()

    def seed_votes(self, votes: Iterable[tuple[str, str, float]], wall_now: float | None = None) -> None:
        """Count votes recorded before this process started ((rater id, IP hash, UTC seconds),
        oldest first) in the vote windows, so a restart resets nobody's quota."""
        wall, now = time.time() if wall_now is None else wall_now, self.clock()
        with self._lock:
            for rater, ip, at in votes:
                if wall - at < DAY:
                    self._votes.count(tuple(k for k in (rater, ip) if k), now - (wall - at))
        self._seeded.set()

    def new_id(self, source: str) -> None:
        """Count one newly issued rater id for this source (IP hash), or raise RateLimited."""
        self._take(self._ids, (source,))

    def open_round(self, source: str) -> None:
        """Count a round started by this source as unvoted until `round_voted`, or raise RateLimited."""
        self._take(self._rounds, (source,))

    def round_voted(self, source: str) -> None:
        """A round of this source got its vote: it no longer counts as a round without one."""
        with self._lock:
            self._rounds.uncount(source)


def proxy_hops() -> int:
    """Trusted reverse proxies in front of the app: $HARMONY_PROXY_HOPS, else 1 on a Hugging Face
    Space (its proxy adds the client's address), else 0."""
    return config.current().proxy_hops


def distrust_server_proxy_headers() -> None:
    """Make `client_address` the only reader of X-Forwarded-For: uvicorn by default rewrites the
    peer from that header for connections from loopback (FORWARDED_ALLOW_IPS), so behind a
    same-host proxy, or for anyone on the host, every request could claim any address. Set here
    to trust no proxy; read at launch."""
    os.environ["FORWARDED_ALLOW_IPS"] = ""


def client_address(forwarded_for: str, peer: str | None, hops: int) -> str | None:
    """The address the rate limit and the IP hash use. X-Forwarded-For entries left of those the
    trusted proxies appended are the client's own claims, so only the one the outermost trusted
    proxy wrote counts; with no trusted proxy the header is ignored (anyone can send it)."""
    entries = [e.strip() for e in forwarded_for.split(",") if e.strip()]
    if hops > 0 and len(entries) >= hops:
        return entries[-hops]
    return peer
