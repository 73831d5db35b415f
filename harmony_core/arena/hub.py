"""Votes that outlive a Space's ephemeral disk: shards restored from a Hub dataset at start-up and
pushed back while serving, when $HARMONY_VOTES_DATASET names the dataset.

Every process writes only its own shard (votes.shard_name: a start time and a uuid), and pushes
only that shard's name, so no push can overwrite another process's or an earlier run's votes.
At start-up every shard of the dataset is copied in before the store is read; a shard already on
disk is replaced only by a longer copy (shards only ever grow), so a restart on a persistent disk
loses nothing either.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from harmony_core import config
from harmony_core.arena.votes import VoteStore

log = logging.getLogger(__name__)

PATH_IN_REPO = "votes"
SHARD_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.csv")
"""A shard name as this app writes them (and the old votes.csv): no folders, no odd characters,
so a dataset file can never be written outside the votes folder."""
DOWNLOADS = ".hub-download"


def _api(api):
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi()


def restore_shards(folder: str | os.PathLike, repo_id: str | None = None, api=None) -> list[str]:
    """Copy the dataset's vote shards into `folder` (before the store is read); returns the names
    taken. Nothing to do without a dataset; a dataset that does not exist yet has no shards."""
    repo_id = repo_id or config.current().votes_dataset
    if not repo_id:
        return []
    from huggingface_hub.errors import RepositoryNotFoundError

    api = _api(api)
    folder = Path(folder)
    staging = folder / DOWNLOADS
    taken: list[str] = []
    try:
        for name in api.list_repo_files(repo_id, repo_type="dataset"):
            directory, _, base = name.rpartition("/")
            if directory != PATH_IN_REPO or not SHARD_PATTERN.fullmatch(base):
                continue
            copy = Path(api.hf_hub_download(repo_id, name, repo_type="dataset", local_dir=staging))
            local = folder / base
            if not local.exists() or copy.stat().st_size > local.stat().st_size:
                os.replace(copy, local)
                taken.append(base)
    except RepositoryNotFoundError:
        pass  # a new dataset: nothing to restore
    except Exception:  # the Hub unreachable: serve what is on disk; pushes still never overwrite
        log.exception("could not restore the vote shards of %s; serving with the shards on disk only "
                      "(the board and the duplicate check miss the others until the next start)", repo_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored %d vote shard(s) from the Hub dataset %s", len(taken), repo_id)
    return taken


def start_hub_sync(store: VoteStore, repo_id: str | None = None, api=None, minutes: float | None = None):
    """Push this process's shard to the dataset every few minutes (and at exit); returns the
    CommitScheduler, or None when no dataset is configured.

    Only the store's own shard is pushed (never another's, the HMAC secret or the lock), and the
    store writes each row holding the scheduler's lock, so a push never catches half a row.
    """
    repo_id = repo_id or config.current().votes_dataset
    if not repo_id:
        return None
    from huggingface_hub import CommitScheduler

    every = minutes if minutes is not None else config.current().votes_sync_minutes
    log.info("pushing %s to the Hub dataset %s every %g min", store.path, repo_id, every)
    scheduler = CommitScheduler(
        repo_id=repo_id, repo_type="dataset", folder_path=store.folder, path_in_repo=PATH_IN_REPO,
        every=every, allow_patterns=[store.path.name], private=True, hf_api=_api(api),
    )
    store.push_lock = scheduler.lock
    return scheduler
