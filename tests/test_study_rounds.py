"""The Blind study's plain functions (harmony_core.studio.study), without a server: ties, the
object zoom, the difference view, and a rater's picks against the crowd."""

from pathlib import Path

import pytest

from harmony_core import export, imaging
from harmony_core.arena import stats, studyset, votes
from harmony_core.errors import InputError
from harmony_core.studio import scratch, study
from harmony_core.studio.raters import RateLimiter, RateLimits, issue_rater_id

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SECRET = b"s" * 32


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch, "SCRATCH_ROOT", tmp_path / "scratch")
    return votes.VoteStore(tmp_path / "votes")


@pytest.fixture
def study_set():
    return studyset.StudySet.load(EXAMPLES / "study")


def vote(state, choice, store, rater):
    return study.cast_vote(state, choice, store, rater, "session", "10.0.0.1", SECRET, RateLimiter(RateLimits(0, 0)))


def test_pairwise_ties_are_stored_with_their_kind(store, study_set):
    rater = issue_rater_id(SECRET)
    state, view = study.start_round(study_set, store, rater, "Pairwise (A/B)")
    assert view.ties and len([i for i in view.images if i]) == 2
    revealed = vote(state, "Both bad", store, rater)
    assert "both bad" in revealed.message and all(" · " in c for c in revealed.captions[:2])
    (row,) = store.rows()
    assert row["winner_method"] == "" and row["choice_pos"] == "" and "tie=both_bad" in row["flags"].split(";")
    state, view = study.start_round(study_set, store, rater, "Best of all (A-D)")
    assert not view.ties
    with pytest.raises(InputError, match="pairwise"):
        vote(state, "Both good", store, rater)


def test_zoom_shows_the_same_object_crop_of_every_image_under_new_names(store, study_set):
    rater = issue_rater_id(SECRET)
    state, _ = study.start_round(study_set, store, rater, "Best of all (A-D)")
    sample = state.round.sample
    zoomed = study.restyle_round(state, zoom=True, difference=False)
    whole = study.restyle_round(state, zoom=False, difference=False)
    assert whole[:len(state.files)] == state.files and not set(zoomed) & set(whole) - {None}
    box = export.object_box(imaging.load_mask(sample.mask))
    for path, crop in zip(state.files, zoomed):
        image = imaging.load_rgb(path)
        assert imaging.load_rgb(crop).shape == export.crop(image, box).shape
    names = " ".join(Path(p).name for p in zoomed if p)
    assert not any(m in names for m in study_set.methods)


def test_the_difference_view_only_after_the_vote(store, study_set):
    rater = issue_rater_id(SECRET)
    state, _ = study.start_round(study_set, store, rater, "Best of all (A-D)")
    before = study.restyle_round(state, zoom=False, difference=True)
    assert before[:len(state.files)] == state.files  # no hint before the vote
    vote(state, "A", store, rater)
    after = study.restyle_round(state, zoom=False, difference=True)
    shown = state.round.shown
    diffs = {m: imaging.load_rgb(p) for m, p in zip(shown, after)}
    if "composite" in diffs:
        assert diffs["composite"].max() <= 3 * study.DIFFERENCE_GAIN  # JPEG noise at most: unchanged
    assert study.restyle_round(state, zoom=False, difference=True) == after  # made once


@pytest.mark.slow
def test_picks_against_the_crowd_after_ten_votes(store, study_set):
    rater, other = issue_rater_id(SECRET), issue_rater_id(SECRET)
    for who in (other, rater):
        for i in range(len(study_set.samples)):
            state, _ = study.start_round(study_set, store, who, "Best of all (A-D)")
            view = vote(state, "A" if who == rater else "B", store, who)
            if who == rater and i < study.CROWD_AFTER - 1:
                assert "against the crowd" not in view.message
    state, _ = study.start_round(study_set, store, rater, "Pairwise (A/B)")
    view = vote(state, "A", store, rater)  # the 10th vote
    assert "Your picks against the crowd" in view.message and "| method | your win share | everyone's |" in view.message


def test_the_board_ranks_and_the_pairs(store, study_set):
    rater = issue_rater_id(SECRET)
    for _ in range(3):
        state, _ = study.start_round(study_set, store, rater, "Pairwise (A/B)")
        vote(state, "Both good", store, rater)
    text, result, _ = study.board(store)
    assert "3 tie(s)" in text and "rank" in result.table.columns
    pairs = study.pair_board(store)
    k = len(result.methods)  # the methods these votes showed
    assert list(pairs.columns) == stats.PAIR_COLUMNS and len(pairs) == k * (k - 1) // 2
    assert set(pairs["more votes to separate"]) == {"no difference yet"}  # ties only: even
