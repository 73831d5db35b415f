"""The Blind study's notice: it names everything a vote row holds and the app shows it on the study tab."""

import pytest

from harmony_core.arena.votes import COLUMNS
from harmony_core.studio import notice


def test_the_notice_names_every_recorded_column_and_the_rules():
    for column in COLUMNS:
        assert column in notice.STUDY_NOTICE
    for fact in ("anonymous rater id", "keyed hash of your IP address", "timings", "**Why:**", "**Where:**",
                 "**How long:**", "private Hugging Face dataset"):
        assert fact in notice.STUDY_NOTICE


@pytest.mark.slow
def test_the_study_tab_shows_the_notice(tmp_path):
    import app

    demo = app.build_app(votes_dir=tmp_path / "votes")
    shown = [block for block in demo.blocks.values() if getattr(block, "value", None) == notice.STUDY_NOTICE]
    assert len(shown) == 1
