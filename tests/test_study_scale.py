"""The study at scale and across restarts: the incremental index gives the same board as the
frame statistics, shards merge exactly once, and a Hub dataset (a local stand-in for the HfApi
calls used) restores and keeps every shard."""

import logging
import multiprocessing as mp
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmony_core.arena import hub, stats, votes
from harmony_core.arena.votes import COLUMNS, DuplicateVote, Vote, VoteStore
from harmony_core.errors import InputError
from harmony_core.studio import study

METHODS = ["a", "b", "c", "d", "e"]


def random_vote(rng: np.random.Generator, rater: str, sample: str, mode: str, source: str = "study") -> Vote:
    shown = list(rng.permutation(METHODS)[: 4 if mode == "best_of_n" else 2])
    flags = ["seed=1"] + (["fast"] if rng.random() < 0.2 else [])
    choice: int | None = int(rng.integers(len(shown))) if rng.random() < 0.8 else None
    if choice is None and mode == "pairwise" and rng.random() < 0.5:
        flags.append("tie=both_good" if rng.random() < 0.5 else "tie=both_bad")
    ip = "" if rater.endswith("0") else f"ip{int(rater[1:]) % 7}"  # some raters share an address, some have none
    return Vote(mode, sample, source, shown, choice, rater, ip_hash=ip, flags=flags)


def fill(store: VoteStore, n: int, seed: int = 0, prefix: str = "s") -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        mode, source = ("best_of_n", "pairwise")[i % 2], ("study", "user")[int(rng.random() < 0.2)]
        store.append(random_vote(rng, f"r{i % 23}", f"{prefix}{i}", mode, source))


@pytest.mark.slow
def test_the_index_board_equals_the_frame_statistics(tmp_path):
    store = VoteStore(tmp_path)
    fill(store, 400)
    frame = pd.DataFrame(store.rows(), columns=list(COLUMNS))
    for mode_filter, mode in study.MODE_FILTERS.items():
        for source_filter, source in study.SOURCE_FILTERS.items():
            keep = np.ones(len(frame), bool)
            if mode:
                keep &= frame["mode"] == mode
            if source:
                keep &= frame["sample_source"] == source
            chosen = frame[keep]
            _, board, _ = study.board(store, mode_filter, source_filter)
            expected = stats.leaderboard(chosen)
            pd.testing.assert_frame_equal(board.table, expected.table, check_dtype=False)
            pd.testing.assert_frame_equal(board.pairs, expected.pairs, check_dtype=False)
            assert board.headline == expected.headline and board.sources == expected.sources
            pd.testing.assert_frame_equal(study.sources_board(store, mode_filter, source_filter), stats.source_table(chosen),
                                          check_dtype=False)
            kept, left_out = stats.without_flagged(chosen)
            text, flagged_board, _ = study.board(store, mode_filter, source_filter, leave_out_flagged=True)
            assert flagged_board.votes == len(kept) and (left_out == 0 or f"{left_out} flagged source(s)" in text)


def test_the_crowd_shares_come_from_the_running_counts(tmp_path):
    store = VoteStore(tmp_path)
    fill(store, 300, seed=1)
    frame = pd.DataFrame(store.rows(), columns=list(COLUMNS))
    crowd = stats.leaderboard(frame[frame["sample_source"] == "study"], n_boot=0).table
    with store.locked_index() as index:
        shares, total = index.shares({study.cell_of(m, "study") for m in votes.MODES})
    assert total == (frame["sample_source"] == "study").sum()
    assert shares == pytest.approx(dict(zip(crowd["method"], crowd["win share %"])))
    mine = frame[(frame["rater_id"] == "r3") & (frame["sample_source"] == "study")]
    message = study.rater_vs_crowd(store, "r3")
    own = stats.leaderboard(mine, n_boot=0).table
    assert f"({len(mine)} of your votes, {total} in all" in message
    assert [line.split(" | ")[0][2:] for line in message.splitlines()[4:]] == list(own["method"])


def test_shards_merge_exactly_once_with_an_old_single_file(tmp_path):
    old = VoteStore(tmp_path)
    old.append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r1"))
    old.path.rename(tmp_path / votes.VOTES_FILE)  # as an older version left it
    first, second = VoteStore(tmp_path), VoteStore(tmp_path)  # two processes, two shards
    assert first.path != second.path
    with pytest.raises(DuplicateVote):  # a vote of the old file
        first.append(Vote("pairwise", "s1", "study", ["a", "b"], 1, "r1"))
    first.append(Vote("pairwise", "s2", "study", ["a", "b"], 1, "r1"))
    with pytest.raises(DuplicateVote):  # the other process's shard, appended since its last look
        second.append(Vote("pairwise", "s2", "study", ["b", "a"], 0, "r1"))
    second.append(Vote("best_of_n", "s2", "study", ["a", "b", "c"], 2, "r2"))
    assert first.voted_samples("r1", "pairwise") == {"s1", "s2"} and first.voted_samples("r2", "best_of_n") == {"s2"}
    assert [p.name for p in votes.shards(tmp_path)][0] == votes.VOTES_FILE and len(votes.shards(tmp_path)) == 3
    assert len(VoteStore(tmp_path).rows()) == 3
    public = study.export_csv(first).read_text()
    assert len(public.splitlines()) == 4 and ",r1," not in public  # every shard, anonymised


def test_the_bulk_reader_keeps_exactly_the_rows_the_line_reader_keeps(tmp_path):
    store = VoteStore(tmp_path)
    fill(store, 40)
    good = store.path.read_bytes().split(b"\n")[1:-1]
    rng = np.random.default_rng(3)
    hostile = []
    for line in good[:20]:
        cells = line.decode().split(",")
        column = int(rng.integers(len(cells)))
        cells[column] = str(rng.choice(["2", "ranking", "users", "9", "x;y", "", "=1", '"a,b"', "a\0b", "z" * 600]))
        hostile.append(",".join(cells).encode())
    hostile += [b'"unterminated,quote', b"garbage,line", b",".join([b"x"] * 15), b"\r".join(good[:1]) + b"\r"]
    block = votes.HEADER + b"\n".join(good + hostile) + b"\n"
    expected = [[r[i] for i in votes._INDEXED] for r in votes._parse(block, "test")]
    columns = votes._columns(block, "test")
    assert sorted(map(list, zip(*columns))) == sorted(expected) and len(expected) >= len(good)


def test_a_torn_line_in_one_shard_costs_only_that_line(tmp_path, caplog):
    crashed, alive = VoteStore(tmp_path), VoteStore(tmp_path)
    crashed.append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r1"))
    alive.append(Vote("pairwise", "s2", "study", ["a", "b"], 0, "r1"))
    with open(crashed.path, "ab") as handle:
        handle.write(b"0123,1,2026")  # the start of a row, then the process died
    reader = VoteStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert reader.refresh() == 2 and len(reader.rows()) == 2
    assert "torn last line" in caplog.text
    alive.append(Vote("pairwise", "s3", "study", ["a", "b"], 0, "r1"))  # a writer sets the torn tail aside
    assert crashed.path.read_bytes().endswith(b"\n") and crashed.path.with_suffix(".torn").read_bytes() == b"0123,1,2026\n"
    assert reader.voted_samples("r1", "pairwise") == {"s1", "s2", "s3"}


def test_a_line_longer_than_a_read_block_is_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(votes, "READ_BLOCK", 256)
    store = VoteStore(tmp_path)
    store.append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r1"))
    with open(store.path, "a") as handle:
        handle.write("x" * 5000 + "\n")
    store.append(Vote("pairwise", "s2", "study", ["a", "b"], 0, "r1"))
    with caplog.at_level(logging.WARNING):
        assert VoteStore(tmp_path).voted_samples("r1", "pairwise") == {"s1", "s2"}
    assert "malformed" in caplog.text


def test_a_large_store_hands_out_its_latest_public_csv_until_it_is_due(tmp_path, monkeypatch):
    store = VoteStore(tmp_path)
    fill(store, 20)
    assert study.export_csv(store) != study.export_csv(store)  # a small study: a fresh export each time
    monkeypatch.setattr(study, "SYNC_UP_TO", 0)
    monkeypatch.setattr(study, "REFRESH_VOTES", 5)
    first = study.export_csv(store)
    assert study.export_csv(store) == first  # asked again: the store is not read again
    store.append(Vote("pairwise", "late", "study", ["a", "b"], 0, "r-late"))
    assert study.export_csv(store) == first  # 1 vote < REFRESH_VOTES and under a minute old
    for i in range(5):
        store.append(Vote("pairwise", f"later{i}", "study", ["a", "b"], 0, "r-late"))
    fresh = study.export_csv(store)
    assert fresh != first and len(fresh.read_text().splitlines()) == 1 + 26


def test_a_small_study_board_shows_every_vote_and_says_so(tmp_path):
    store = VoteStore(tmp_path)
    fill(store, 20)
    text, first, _ = study.board(store, "All votes", "All images")
    assert "recomputed with each new vote" in text and first.votes == 20
    store.append(Vote("pairwise", "late", "study", ["a", "b"], 0, "r-late"))
    assert study.board(store, "All votes", "All images")[1].votes == 21


def test_a_busy_board_is_served_from_its_estimate_and_refreshed_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "SYNC_UP_TO", 0)
    monkeypatch.setattr(study, "REFRESH_VOTES", 5)
    store = VoteStore(tmp_path)
    fill(store, 20)
    text, first, _ = study.board(store, "All votes", "All images")
    assert "Estimate of" in text and "after 5 more votes or 60 s" in text and first.votes == 20
    fill_more = VoteStore(tmp_path)
    rng = np.random.default_rng(5)
    for i in range(3):
        fill_more.append(random_vote(rng, "r99", f"new{i}", "pairwise"))
    assert study.board(store, "All votes", "All images")[1].votes == 20  # 3 < REFRESH_VOTES: the estimate stands
    for i in range(3, 6):
        fill_more.append(random_vote(rng, "r99", f"new{i}", "pairwise"))
    assert study.board(store, "All votes", "All images")[1].votes == 20  # served at once; recomputed behind
    deadline = time.monotonic() + 30
    while study.board(store, "All votes", "All images")[1].votes != 26:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- the Hub, through a local stand-in for the HfApi calls the store uses -----------------------

class FakeHub:
    """A dataset repo in memory: the HfApi methods restore_shards and CommitScheduler call."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commits = 0
        self.lock = threading.Lock()

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False, **_):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def list_repo_files(self, repo_id, repo_type=None, **_):
        with self.lock:
            return sorted(self.files)

    def hf_hub_download(self, repo_id, filename, repo_type=None, local_dir=None, **_):
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, repo_type=None, commit_message="", revision=None, **_):
        with self.lock:
            for op in operations:
                with op.as_file() as handle:
                    self.files[op.path_in_repo] = handle.read()
            self.commits += 1

    def run_as_future(self, fn, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # a future carries the error
            future.set_exception(exc)
        return future


def serve(folder: Path, fake: FakeHub):
    """What the app does at start-up: restore, index, then push this process's shard."""
    hub.restore_shards(folder, "org/votes", api=fake)
    store = VoteStore(folder)
    store.refresh()
    scheduler = hub.start_hub_sync(store, "org/votes", api=fake, minutes=60)
    return store, scheduler


def test_a_restart_restores_the_dataset_and_never_overwrites_it(tmp_path):
    fake = FakeHub()
    old = VoteStore(tmp_path / "before")
    old.append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r1"))
    fake.files["votes/votes.csv"] = old.path.read_bytes()  # an older version's single file
    fake.files["votes/20260101T000000Z-feed.csv"] = old.path.read_bytes().replace(b",s1,", b",s9,")
    fake.files["votes/../../escape.csv"] = b"nothing"  # never written outside the folder
    store, scheduler = serve(tmp_path / "space", fake)
    try:
        assert store.voted_samples("r1", "pairwise") == {"s1", "s9"}
        with pytest.raises(DuplicateVote):  # the restarted Space still knows who voted
            store.append(Vote("pairwise", "s1", "study", ["a", "b"], 1, "r1"))
        store.append(Vote("pairwise", "s2", "study", ["a", "b"], 1, "r1"))
        scheduler.push_to_hub()
        assert fake.files["votes/" + store.path.name] == store.path.read_bytes()
        assert fake.files["votes/votes.csv"] == old.path.read_bytes()  # untouched: only the own shard is pushed
        assert not (tmp_path / "escape.csv").exists() and not (tmp_path / "space" / hub.DOWNLOADS).exists()
    finally:
        scheduler.stop()
    shutil.rmtree(tmp_path / "space")  # an ephemeral disk: everything is gone
    again, scheduler = serve(tmp_path / "space", fake)
    scheduler.stop()
    assert again.voted_samples("r1", "pairwise") == {"s1", "s2", "s9"}


def test_an_unreachable_hub_leaves_the_studio_serving(tmp_path, caplog):
    class Down(FakeHub):
        def list_repo_files(self, repo_id, repo_type=None, **_):
            raise ConnectionError("no network")

    with caplog.at_level(logging.ERROR):
        assert hub.restore_shards(tmp_path, "org/votes", api=Down()) == []
    assert "could not restore" in caplog.text
    VoteStore(tmp_path).append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r1"))


def _replica(folder: str, name: str, fake_files, start) -> None:
    fake = FakeHub()
    fake.files = fake_files
    store, scheduler = serve(Path(folder), fake)
    start.wait()
    for j in range(20):
        store.append(Vote("pairwise", f"{name}-{j}", "study", ["a", "b"], j % 2, f"rater-{name}"))
        if j % 5 == 4:
            scheduler.push_to_hub()
    scheduler.stop()


def test_two_replicas_push_their_own_shards_at_once(tmp_path):
    fake = FakeHub()
    threads, start = [], threading.Barrier(2)
    for name in ("x", "y"):  # two replicas, each with its own disk, one dataset
        threads.append(threading.Thread(target=_replica, args=(str(tmp_path / name), name, fake.files, start)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len([f for f in fake.files if f.startswith("votes/")]) == 2
    store, scheduler = serve(tmp_path / "restart", fake)
    scheduler.stop()
    assert len(store.rows()) == 40
    assert store.voted_samples("rater-x", "pairwise") == {f"x-{j}" for j in range(20)}


def test_a_torn_line_in_a_restored_shard_is_skipped(tmp_path, caplog):
    fake = FakeHub()
    writer = VoteStore(tmp_path / "before")
    for j in range(3):
        writer.append(Vote("pairwise", f"s{j}", "study", ["a", "b"], 0, "r1"))
    fake.files["votes/" + writer.path.name] = writer.path.read_bytes() + b"ab12,1,20"
    with caplog.at_level(logging.WARNING):
        store, scheduler = serve(tmp_path / "space", fake)
        scheduler.stop()
        assert len(store.rows()) == 3
    assert "torn last line" in caplog.text
    store.append(Vote("pairwise", "s3", "study", ["a", "b"], 0, "r1"))
    assert len(VoteStore(tmp_path / "space").rows()) == 4


def test_a_hostile_vote_is_still_refused(tmp_path):
    store = VoteStore(tmp_path)
    with pytest.raises(InputError):
        store.append(Vote("ranking", "s1", "study", ["a", "b"], 0, "r1"))
    with pytest.raises(InputError):
        store.append(Vote("pairwise", "s1", "study", ["a", "b"], 0, "r" * (votes.MAX_FIELD_CHARS + 1)))
    assert study._key("board", "=cmd", "\x00" * 9)[1] == study._key("board", "All votes", "All images")[1]
    assert not votes.shards(tmp_path)


def _hammer(folder: str, worker: int) -> None:
    store = VoteStore(folder)
    for j in range(30):
        try:
            store.append(Vote("pairwise", f"contested-{j}", "study", ["a", "b"], 0, "shared"))
        except DuplicateVote:
            pass


def test_two_processes_with_their_own_shards_record_a_contested_vote_once(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = VoteStore(tmp_path).rows()
    assert sorted(r["sample_id"] for r in rows) == sorted(f"contested-{j}" for j in range(30))


def test_the_organisers_export_merges_every_shard_into_csv_parquet_and_a_card(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from harmony_core import cli
    from harmony_core.arena import dataset

    folder = tmp_path / "votes"
    fill(VoteStore(folder), 30)
    fill(VoteStore(folder), 30, seed=2, prefix="t")  # a second shard
    assert cli.main(["export-votes", "--votes", str(folder), "--out", str(tmp_path / "out")]) == 0
    table = pq.read_table(tmp_path / "out" / "votes.parquet")
    kept = len(VoteStore(folder).rows())
    assert table.num_rows == kept and tuple(table.column_names) == votes.PUBLIC_COLUMNS
    assert str(table.schema.field("latency_ms").type) == "int64"
    text = (tmp_path / "out" / "votes.csv").read_text()
    assert len(text.splitlines()) == kept + 1 and ",r1," not in text
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0") and all(f"`{c}`" in card for c in votes.PUBLIC_COLUMNS)
    assert f"{kept} votes" in card
    with pytest.raises(InputError, match="outside the votes folder"):
        dataset.export(folder, folder / "export")


def test_the_running_pair_counts_are_the_frames_win_matrix(tmp_path):
    store = VoteStore(tmp_path)
    fill(store, 200, seed=4)
    frame = pd.DataFrame(store.rows(), columns=list(COLUMNS))
    study_votes = frame[frame["sample_source"] == "study"]
    with store.locked_index() as index:
        names, wins = index.pair_wins({study.cell_of(m, "study") for m in votes.MODES})
    order = [names.index(m) for m in METHODS]
    expected = stats.win_matrix(stats.comparisons(study_votes), METHODS)
    np.testing.assert_allclose(wins[np.ix_(order, order)], expected)


def test_a_pairwise_round_shows_the_least_compared_open_pair():
    import random

    from harmony_core.arena import sampling
    from harmony_core.arena.studyset import StudySample, StudySet, next_round

    wins = np.array([[0, 60, 5, 1], [0, 0, 4, 2], [4, 4, 0, 3], [1, 2, 3, 0]], float)  # a-b: 60-0, settled
    assert sampling.separated(wins)[0, 1] and not sampling.separated(wins)[0, 3]
    picks = {sampling.informative_pair([0, 1, 2, 3], wins, random.Random(s)) for s in range(20)}
    assert picks == {(0, 3)}  # 2 comparisons, the fewest of the open pairs
    sample = StudySample("s", "s", Path("."), Path("."), dict.fromkeys("abcd", Path(".")))
    rounds = {tuple(sorted(next_round(StudySet(Path("."), list("abcd"), [sample]), "pairwise", set(), seed=s,
                                      compared=(list("abcd"), wins)).shown)) for s in range(10)}
    assert rounds == {("a", "d")}
    fresh = {tuple(sorted(next_round(StudySet(Path("."), list("abcd"), [sample]), "pairwise", set(), seed=s,
                                     compared=([], np.zeros((0, 0)))).shown)) for s in range(40)}
    assert len(fresh) > 3  # nothing compared yet: every pair is as good, chosen at random


def test_informative_sampling_separates_with_fewer_votes_in_simulation():
    from harmony_core.arena import sampling

    result = sampling.compare([-0.6, -0.2, 0.2, 0.6], runs=4)
    assert result["informative votes"] < result["uniform votes"]


def test_a_restart_keeps_the_days_rate_limits(tmp_path):
    from harmony_core.studio import raters

    store = VoteStore(tmp_path)
    for j in range(2):
        store.append(Vote("pairwise", f"s{j}", "study", ["a", "b"], 0, "r1", ip_hash="ip-a"))
    old = store.rows()[0]
    with open(store.path, "a") as handle:  # a vote of two days ago, by another rater on the same address
        stale = dict(old, rater_id="r2", sample_id="s-old", ts_utc="2000-01-01T00:00:00.000000Z")
        handle.write(",".join(stale[c] for c in COLUMNS) + "\n")
    limiter = raters.RateLimiter(raters.RateLimits(per_minute=0, per_day=2))
    study.load_in_background(VoteStore(tmp_path), limiter)  # what the app does; the votes below wait for it
    with pytest.raises(raters.RateLimited):
        limiter.take("r1", "")
    with pytest.raises(raters.RateLimited):
        limiter.take("r3", "ip-a")  # the address used its day too
    limiter.take("r2", "ip-b")  # the old vote is not counted
