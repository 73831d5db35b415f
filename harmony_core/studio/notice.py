"""The Blind study tab's notice: what a vote records, why, where it goes and for how long.

One text, shown above the study by app.py and linked from the Space card (docs/security.md quotes
the same facts); the values come from the modules that decide them, so the notice follows the code.
"""

from __future__ import annotations

from harmony_core.arena.votes import COLUMNS, VOTES_FILE
from harmony_core.studio.raters import RateLimits
from harmony_core.studio.scratch import SCRATCH_MAX_AGE_S

_LIMITS = RateLimits()

STUDY_NOTICE = (
    "**What a vote records.** Your choice (the winning method, the order the images were shown in, the "
    "image's id), an anonymous rater id (random, signed by the server, kept in your browser), a keyed "
    "hash of your browser session, a keyed hash of your IP address (HMAC-SHA256 with the server's secret; the address "
    "itself is never stored) and timings (when you voted, how long the round took). "
    "**Why:** to rank the methods, to count each rater once per image, and to limit abuse "
    f"(by default at most {_LIMITS.per_minute} votes a minute and {_LIMITS.per_day} a day per rater and per IP hash, "
    f"and {_LIMITS.new_ids_per_day} new rater ids a day per IP hash). "
    f"**Where:** one file on this server (`{VOTES_FILE}`; columns: {', '.join(COLUMNS)}) and, when the "
    "organiser turns it on, a private Hugging Face dataset. Nothing else is shared. "
    "**How long:** until the organiser deletes the file; there is no automatic expiry. The rate-limit "
    "counters live only in the server's memory. Images (yours, and your own Compare results in a blind "
    f"round) are never stored with the votes: they stay in temporary folders removed after "
    f"{SCRATCH_MAX_AGE_S // 3600} hours."
)
