"""The vote store: exactly-once appends under concurrency, crash safety, dedupe, sanitizing."""

import csv
import logging
import multiprocessing as mp
import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from harmony_core.arena import hub, votes
from harmony_core.arena.votes import COLUMNS, DuplicateVote, Vote, VoteStore

SHOWN = ["composite", "reinhard", "histogram", "poisson"]


def make_vote(rater: str, sample: str, mode: str = "best_of_n", choice: int | None = 1, source: str = "study") -> Vote:
    return Vote(mode=mode, sample_id=sample, sample_source=source, shown_order=SHOWN if mode == "best_of_n" else SHOWN[:2],
                choice_pos=choice, rater_id=rater, latency_ms=1234, flags=["seed=1"])


def physical_lines(store: VoteStore) -> list[list[str]]:
    """The header, then every shard's rows (each shard starts with the header and ends with a newline)."""
    lines = [list(COLUMNS)]
    for path in votes.shards(store.folder):
        text = path.read_text()
        assert text.endswith("\n")
        header, *rows = csv.reader(text.splitlines())
        assert tuple(header) == COLUMNS
        lines += rows
    return lines


def _worker(folder: str, worker: int, count: int, shared_wins) -> None:
    store = VoteStore(folder)
    for j in range(count):
        store.append(make_vote(f"rater-{worker}", f"sample-{j}", choice=j % 4))
        if j % 50 == 0:  # every process races for the same (rater, sample, mode) now and then
            try:
                store.append(make_vote("shared", f"contested-{j}"))
                with shared_wins.get_lock():
                    shared_wins.value += 1
            except DuplicateVote:
                pass


@pytest.mark.slow
def test_eight_processes_append_exactly_once(tmp_path):
    ctx = mp.get_context("fork")
    wins = ctx.Value("i", 0)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, 200, wins)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    store = VoteStore(tmp_path)
    rows = store.rows()
    own = [r for r in rows if r["rater_id"] != "shared"]
    assert len(own) == 8 * 200
    assert wins.value == 4  # contested-0, -50, -100, -150: each won by exactly one process
    assert len(rows) == 1600 + 4
    lines = physical_lines(store)
    assert tuple(lines[0]) == COLUMNS and len(lines) == len(rows) + 1
    assert all(len(line) == len(COLUMNS) for line in lines)
    assert len({r["vote_id"] for r in rows}) == len(rows)
    assert len({(r["rater_id"], r["sample_id"], r["mode"]) for r in rows}) == len(rows)


def test_threads_cannot_record_a_vote_twice(tmp_path):
    store = VoteStore(tmp_path)
    outcomes: list[str] = []

    def click():
        try:
            store.append(make_vote("r1", "s1"))
            outcomes.append("ok")
        except DuplicateVote:
            outcomes.append("dup")

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["dup"] * 7 + ["ok"]
    assert len(store.rows()) == 1


def _crash_mid_write(folder: str) -> None:
    real_write = os.write

    def half_then_die(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)

    votes.os.write = half_then_die
    store = VoteStore(folder)
    Path(folder, "crasher-shard").write_text(store.path.name)
    store.append(make_vote("crasher", "s-crash"))


def test_a_crash_mid_write_loses_only_that_vote(tmp_path, caplog):
    store = VoteStore(tmp_path)
    for j in range(5):
        store.append(make_vote("r1", f"s{j}"))
    child = mp.get_context("fork").Process(target=_crash_mid_write, args=(str(tmp_path),))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    crashed = tmp_path / (tmp_path / "crasher-shard").read_text()  # the crashed process's own shard
    torn = crashed.read_bytes()
    before = len(votes.HEADER)
    assert torn.startswith(votes.HEADER) and not torn.endswith(b"\n")  # half a line really is there
    with caplog.at_level(logging.WARNING):
        assert len(VoteStore(tmp_path).rows()) == 5
    assert "torn last line" in caplog.text
    store.append(make_vote("r2", "s0"))  # the next append must not glue onto the torn line
    rows = VoteStore(tmp_path).rows()
    assert [r["rater_id"] for r in rows] == ["r1"] * 5 + ["r2"]
    assert all(len(line) == len(COLUMNS) for line in physical_lines(store))
    assert crashed.with_suffix(".torn").read_bytes() == torn[before:] + b"\n"  # kept for inspection, not lost
    assert crashed.read_bytes() == votes.HEADER  # cut back to its last complete line
    store.append(make_vote("crasher", "s-crash"))  # the lost vote can be cast again


def test_duplicates_are_rejected_per_rater_sample_mode_and_source(tmp_path):
    store = VoteStore(tmp_path)
    store.append(make_vote("r1", "s1"))
    with pytest.raises(DuplicateVote):
        store.append(make_vote("r1", "s1", choice=None))
    with pytest.raises(DuplicateVote):  # another process's store sees it too
        VoteStore(tmp_path).append(make_vote("r1", "s1"))
    store.append(make_vote("r1", "s1", mode="pairwise"))
    store.append(make_vote("r2", "s1"))
    assert len(store.rows()) == 3
    assert store.voted_samples("r1", "best_of_n") == {"s1"}
    # The same image voted on as the rater's own Compare result is another trial, once too.
    assert store.voted_samples("r1", "best_of_n", source="user") == set()
    store.append(make_vote("r1", "s1", source="user"))
    with pytest.raises(DuplicateVote):
        VoteStore(tmp_path).append(make_vote("r1", "s1", source="user"))
    assert store.voted_samples("r1", "best_of_n", source="user") == {"s1"} and len(store.rows()) == 4


@pytest.mark.parametrize("evil", ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_formula_injection_is_neutralized(tmp_path, evil):
    store = VoteStore(tmp_path)
    store.append(make_vote(evil, "s1"))
    line = physical_lines(store)[1]
    rater = line[COLUMNS.index("rater_id")]
    assert rater == "'" + evil.replace("\r", " ")
    assert not any(cell.startswith(votes.FORMULA_STARTS) for cell in line)
    assert store.voted_samples(evil, "best_of_n") == {"s1"}


def test_line_breaks_in_cells_cannot_split_a_row(tmp_path):
    store = VoteStore(tmp_path)
    store.append(make_vote("a\nb\r\nc", "s1"))
    assert len(store.path.read_text().splitlines()) == 2
    assert store.rows()[0]["rater_id"] == "a b  c"


def test_malformed_lines_are_skipped_with_a_warning(tmp_path, caplog):
    store = VoteStore(tmp_path)
    store.append(make_vote("r1", "s1"))
    with open(store.path, "a") as handle:
        handle.write("garbage,line\n")
    store.append(make_vote("r2", "s1"))
    with caplog.at_level(logging.WARNING):
        assert [r["rater_id"] for r in store.rows()] == ["r1", "r2"]
    assert "malformed" in caplog.text


def test_ip_is_stored_only_as_an_hmac(tmp_path, monkeypatch):
    monkeypatch.delenv(votes.SECRET_ENV, raising=False)
    secret = votes.load_secret(tmp_path)
    path = tmp_path / votes.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert votes.load_secret(tmp_path) == secret  # created once, then reused
    hashed = votes.ip_hash("203.0.113.7", secret)
    assert hashed and "203.0.113.7" not in hashed and hashed != votes.ip_hash("203.0.113.8", secret)
    assert votes.ip_hash("203.0.113.7", b"other") != hashed
    monkeypatch.setenv(votes.SECRET_ENV, "from-env")
    assert votes.load_secret(tmp_path) == b"from-env"
    store = VoteStore(tmp_path)
    vote = make_vote("r1", "s1")
    vote.ip_hash = hashed
    store.append(vote)
    assert "203.0.113.7" not in store.path.read_text()


def test_vote_validation(tmp_path):
    with pytest.raises(votes.InputError):
        make_vote("r1", "s1", mode="ranking")
    with pytest.raises(votes.InputError):
        make_vote("r1", "s1", choice=9)
    with pytest.raises(votes.InputError):
        make_vote("", "s1")


def test_hub_sync_is_off_unless_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("HARMONY_VOTES_DATASET", raising=False)
    assert hub.start_hub_sync(VoteStore(tmp_path)) is None and hub.restore_shards(tmp_path) == []


def test_oversized_fields_are_refused_and_hostile_lines_skipped(tmp_path, caplog):
    with pytest.raises(votes.InputError, match="longer than"):
        make_vote("r" * (votes.MAX_FIELD_CHARS + 1), "s1")
    store = VoteStore(tmp_path)
    store.append(make_vote("r1", "s1"))
    good = physical_lines(store)[1]
    hostile = [dict(zip(COLUMNS, good), rater_id="r" * 200_000),  # past csv's field size limit
               dict(zip(COLUMNS, good), choice_pos="7"), dict(zip(COLUMNS, good), winner_method="poisson")]
    with open(store.path, "a") as handle:
        for row in hostile:
            handle.write(",".join(row[c] for c in COLUMNS) + "\n")
    store.append(make_vote("r2", "s1"))
    with caplog.at_level(logging.WARNING):
        assert [r["rater_id"] for r in VoteStore(tmp_path).rows()] == ["r1", "r2"]
    assert "3 malformed" in caplog.text
