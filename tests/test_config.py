"""harmony_core.config: every variable parsed by one rule per type, bad values named at start-up,
and the tests' monkeypatch reaching the code that reads `config.current()`."""

from pathlib import Path

import pytest

from harmony_core import config
from harmony_core.config import Config, ConfigError
from harmony_core.diffusion import components


def test_an_empty_environment_gives_the_documented_defaults():
    assert Config.from_environ({}) == Config()
    settings = Config.from_environ({})
    assert (settings.proxy_hops, settings.votes_per_minute, settings.votes_sync_minutes, settings.port) == (0, 30, 5.0, 7860)
    assert not settings.allow_download and not settings.on_space and settings.votes_dir is None


def test_values_are_typed_and_blank_means_unset():
    settings = Config.from_environ({
        "HARMONY_ALLOW_DOWNLOAD": " 1 ", "HARMONY_VOTES_DIR": "/data/votes", "HARMONY_STUDY_DIR": "  ",
        "HARMONY_VOTES_PER_DAY": "0", "HARMONY_VOTES_SYNC_MINUTES": "0.5", "HARMONY_HSPACE_WEIGHTS": " google/x ",
        "HARMONY_PTL_WEIGHTS": "", "HARMONY_VOTE_SECRET": " s ", "GRADIO_SERVER_PORT": "", "PORT": "8080",
    })
    assert settings.allow_download and settings.votes_dir == Path("/data/votes") and settings.study_dir is None
    assert (settings.votes_per_day, settings.votes_sync_minutes, settings.port) == (0, 0.5, 8080)
    assert dict(settings.weights) == {"HARMONY_HSPACE_WEIGHTS": "google/x"}
    assert settings.vote_secret == " s "  # as given: the IP hashes of stored votes depend on it
    assert "vote_secret" not in repr(settings)


def test_a_space_trusts_its_front_proxy_unless_told_otherwise():
    assert Config.from_environ({"SPACE_ID": "me/studio"}).proxy_hops == 1
    assert Config.from_environ({"SPACE_ID": "me/studio", "HARMONY_PROXY_HOPS": "0"}).proxy_hops == 0
    assert Config.from_environ({"SPACES_ZERO_GPU": "true"}).zero_gpu


@pytest.mark.parametrize("name, value, words", [
    ("HARMONY_ALLOW_DOWNLOAD", "true", "must be 0 or 1"),
    ("HARMONY_VOTES_PER_MINUTE", "ten", "whole number"),
    ("HARMONY_PROXY_HOPS", "-1", "0 or more"),
    ("HARMONY_VOTES_SYNC_MINUTES", "0", "above 0"),
    ("GRADIO_SERVER_PORT", "70000", "1 to 65535"),
])
def test_a_bad_value_is_refused_with_the_variables_name(name, value, words):
    with pytest.raises(ConfigError, match=words) as refused:
        Config.from_environ({name: value})
    assert name.removeprefix("GRADIO_SERVER_") in str(refused.value).upper()


def test_current_is_read_once_and_reload_reads_again(monkeypatch):
    first = config.current()
    assert config.current() is first
    monkeypatch.setenv("HARMONY_VOTES_PER_DAY", "7")  # conftest's monkeypatch reloads
    assert config.current() is not first and config.current().votes_per_day == 7


def test_the_readers_follow_the_tests_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HARMONY_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("HARMONY_TEST_WEIGHTS", str(tmp_path))
    assert components.downloads_allowed()
    assert components.configured_source(None, "HARMONY_TEST_WEIGHTS") == str(tmp_path)
    monkeypatch.delenv("HARMONY_ALLOW_DOWNLOAD")
    assert not components.downloads_allowed()


@pytest.mark.slow  # imports the app (gradio)
def test_the_app_resolves_its_folders_by_one_rule(monkeypatch, tmp_path):
    import app

    monkeypatch.setenv("HARMONY_VOTES_DIR", str(tmp_path / "votes"))
    assert app.folders(None, None) == (app.DEFAULT_STUDY, tmp_path / "votes")
    assert app.folders(tmp_path, tmp_path / "mine") == (tmp_path, tmp_path / "mine")
