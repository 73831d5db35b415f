"""The organiser's export: every shard's votes merged into one CSV and one Parquet file, with a
dataset card, ready to publish as a Hugging Face dataset (`export-votes`, a local command; the
studio's public /votes_csv stays as it is).

The rows are the public ones (votes.PUBLIC_COLUMNS): no rater id (a bearer token), no session
hash, no server-keyed IP hash; `rater` and `source` are pseudonyms keyed for this export only, so
a published dataset cannot be joined with another export or with the server's files.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from harmony_core.arena.votes import PUBLIC_COLUMNS, VoteStore, anonymous_lines
from harmony_core.errors import InputError

DESCRIPTIONS = {
    "vote_id": "Random id of the vote (uuid4, hex).",
    "schema_version": "Version of this row layout (1).",
    "ts_utc": "When the vote was recorded (UTC, ISO 8601).",
    "app_version": "Version of Harmony Studio that recorded it.",
    "mode": "`best_of_n`: up to four outputs shown, pick the most natural; `pairwise`: two outputs, A or B.",
    "sample_id": "The composite voted on: SHA-256 of its composite and mask (a study-set sample, or a rater's own).",
    "sample_source": "`study`: a sample of the blind study set; `user`: the rater's own composite from Compare "
                     "(not blind to the names: keep apart).",
    "shown_order": "The methods behind the images labelled A, B, C, D, separated by `;`.",
    "choice_pos": "Index into shown_order of the pick (0 = A); empty for a tie or \"can't decide\".",
    "winner_method": "The picked method; empty for a tie or \"can't decide\".",
    "latency_ms": "Milliseconds from the round being shown to the vote.",
    "flags": "`;`-separated: `seed=N` (the round's shuffle), `tie=both_good` / `tie=both_bad` (pairwise ties), "
             "`fast` (voted in under a second).",
    "rater": "Pseudonym of the rater id, keyed for this export only.",
    "source": "Pseudonym of the network address (or of the rater where none was recorded), keyed for this export "
              "only: the statistics cluster votes by it.",
}
INTEGER_COLUMNS = ("choice_pos", "latency_ms")


def export(folder: str | os.PathLike, out: str | os.PathLike, licence: str = "cc-by-4.0") -> dict[str, Path]:
    """Write votes.csv, votes.parquet and README.md (the card) into `out`; returns their paths."""
    folder, out = Path(folder).resolve(), Path(out).resolve()
    if out == folder or folder in out.parents:
        raise InputError("Write the export outside the votes folder (its CSV would be read as a shard).")
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "votes.csv"
    with open(csv_path, "wb") as handle:
        handle.writelines(anonymous_lines(VoteStore(folder).iter_rows()))
    parquet_path = out / "votes.parquet"
    summary = _write_parquet(csv_path, parquet_path)
    card = out / "README.md"
    card.write_text(dataset_card(summary, licence))
    return {"csv": csv_path, "parquet": parquet_path, "card": card}


def _write_parquet(csv_path: Path, parquet_path: Path) -> dict[str, object]:
    """The CSV as Parquet (every column text, the integer ones as nullable integers), and the
    counts the card reports."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv
    from pyarrow import parquet as pq

    types = {c: pa.int64() if c in INTEGER_COLUMNS else pa.string() for c in PUBLIC_COLUMNS}
    table = pa_csv.read_csv(csv_path, convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False))
    pq.write_table(table, parquet_path)
    methods: Counter[str] = Counter()
    for order in table.column("shown_order").to_pylist():
        methods.update(order.split(";"))
    return {"votes": table.num_rows, "methods": sorted(methods),
            "modes": dict(Counter(table.column("mode").to_pylist())),
            "sources": len(set(table.column("source").to_pylist())),
            "raters": len(set(table.column("rater").to_pylist()))}


def dataset_card(summary: dict[str, object], licence: str) -> str:
    """The dataset's README: licence and files for the Hub, how the votes were collected, each column."""
    columns = "\n".join(f"| `{c}` | {DESCRIPTIONS[c]} |" for c in PUBLIC_COLUMNS)
    modes = ", ".join(f"{n} {m}" for m, n in sorted(summary["modes"].items())) or "none"
    return f"""---
license: {licence}
pretty_name: Harmony Studio blind study votes
task_categories:
- image-to-image
configs:
- config_name: default
  data_files: votes.parquet
---

# Harmony Studio blind study votes

{summary['votes']} votes ({modes}) from {summary['raters']} raters behind {summary['sources']} sources on the
image-harmonization methods {', '.join(summary['methods']) or '(none)'}; exported
{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Files: `votes.parquet` and the same rows as `votes.csv`.

## How the votes were collected

Raters saw a composite's harmonized outputs side by side, without method names, in a random
order (each image re-encoded and renamed so nothing but its pixels reaches the browser), and
picked the most natural one (`best_of_n`, up to four shown) or one of two (`pairwise`, where
"both good" and "both bad" are ties); "can't decide" is recorded too. Each rater id votes at
most once per sample, mode and sample source; votes are rate-limited per rater and per network
address. `user` rows are votes on a rater's own composites, whose method names they had seen:
analyse them apart from `study` rows.

Rater ids, session hashes and the server's keyed hashes of network addresses are not in this
dataset: `rater` and `source` are pseudonyms keyed with a random key used for this export only.
Votes from one `source` (one network address) are correlated; the studio's statistics resample
sources, not votes (see the project's docs/studio.md).

## Columns

| column | meaning |
|---|---|
{columns}

## Licence

The votes are published under {licence}.
"""
