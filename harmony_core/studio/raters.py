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
from dataclasses import dataclass
from typing import Callable

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
    """Too many votes from one rater or one IP hash in the window; the vote is not recorded."""


@dataclass(frozen=True)
class RateLimits:
    """Votes allowed per key (a rater id, an IP hash) per minute and per day; 0 = no limit.

    Defaults in the spirit of public arenas: a person reads a round in a few seconds at least,
    and a study session is rarely longer than a few hundred rounds."""

    per_minute: int = 30
    per_day: int = 1000


class RateLimiter:
    """Sliding-window counters in this process's memory (a restart forgets them, which only
    lets a rater vote again after the restart). Thread-safe."""

    WINDOWS = (("minute", 60.0), ("day", 86400.0))

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}

    def take(self, *keys: str) -> None:
        """Count one vote for every non-empty key, or raise RateLimited (counting none) when any
        key has used up a window."""
        now = self.clock()
        caps = {"minute": self.limits.per_minute, "day": self.limits.per_day}
        keys = tuple(k for k in keys if k)
        with self._lock:
            for key in keys:
                times = self._times.setdefault(key, deque())
                while times and now - times[0] >= 86400.0:
                    times.popleft()
                for name, seconds in self.WINDOWS:
                    cap = caps[name]
                    if cap and sum(1 for t in times if now - t < seconds) >= cap:
                        raise RateLimited(f"Too many votes: at most {cap} a {name} from one rater or network. "
                                          "Your vote was not recorded; please try again later.")
            for key in keys:
                self._times[key].append(now)


def proxy_hops() -> int:
    """Trusted reverse proxies in front of the app: $HARMONY_PROXY_HOPS, else 1 on a Hugging Face
    Space (its proxy adds the client's address), else 0."""
    return int(os.environ.get("HARMONY_PROXY_HOPS") or (1 if os.environ.get("SPACE_ID") else 0))


def client_address(forwarded_for: str, peer: str | None, hops: int) -> str | None:
    """The address the rate limit and the IP hash use. X-Forwarded-For entries left of those the
    trusted proxies appended are the client's own claims, so only the one the outermost trusted
    proxy wrote counts; with no trusted proxy the header is ignored (anyone can send it)."""
    entries = [e.strip() for e in forwarded_for.split(",") if e.strip()]
    if hops > 0 and len(entries) >= hops:
        return entries[-hops]
    return peer
