"""Visitor words: what the studio says to a person who knows nothing of its code.

A method that cannot run gets one plain line (why, and what would make it run); the method's own
technical reason (environment variables, commands, Python calls) stays behind a "details" toggle.
Toasts show plain text, so the Markdown of a message is taken out before it becomes one."""

from __future__ import annotations

import html
import re

_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("cuda", "gpu"), "it needs a graphics card (GPU), which this server does not have"),
    (("no module", "not installed", "pip install", "package"),
     "a software package it needs is not installed on this server; the server's organiser can install it"),
    (("weights", "checkpoint", "cache", "download", "does not exist", "folder", "hub"),
     "its trained model files are not on this server; the server's organiser can add them"),
)
FALLBACK = "something it needs is missing on this server; the server's organiser can fix it"


def plain_reason(reason: str) -> str:
    """One line a visitor understands: why a method cannot run here, and what would make it run."""
    text = reason.lower()
    for keys, words in _CAUSES:
        if any(key in text for key in keys):
            return words
    return FALLBACK


def details(summary: str, detail: str) -> str:
    """Markdown for a line with its technical detail folded under a "details" toggle."""
    return (f"<details><summary>{summary} <small>(details)</small></summary>\n\n"
            f"{html.escape(detail, quote=False)}\n\n</details>")


def cannot_run(method: str, reason: str) -> str:
    """The folded line the Compare and Explain tabs show for a method that cannot run."""
    return details(f"<strong>{html.escape(method)}</strong> cannot run here: {plain_reason(reason)}.", reason)


def plain_text(markdown: str) -> str:
    """A message without Markdown emphasis or code marks, for a toast (which shows them raw)."""
    text = re.sub(r"\*\*(.+?)\*\*|__(.+?)__", lambda m: m.group(1) or m.group(2), markdown)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", text)
    return text.replace("`", "")
