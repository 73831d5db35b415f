"""Exact Hub downloads, against a stand-in Hub listing (huggingface_hub's calls monkeypatched; no network)."""


import pytest

from harmony_core.cli import main
from harmony_core.diffusion import components, hub
from harmony_core.methods import freepih, hspace

SD15_REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.fp16.safetensors",
    "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
    "safety_checker/model.safetensors", "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
]
"""The files of stable-diffusion-v1-5/stable-diffusion-v1-5 (abridged: every kind it publishes)."""
DDPM_REPO_FILES = [".gitattributes", "README.md", "config.json", "diffusion_pytorch_model.bin",
                   "diffusion_pytorch_model.safetensors", "scheduler_config.json", "images/generated_image_0.png"]


@pytest.fixture
def stand_in_hub(monkeypatch, tmp_path):
    """A Hub with two repos: list_repo_files answers from the listings above, hf_hub_download writes
    a small file into a cache-like snapshot folder and records what was fetched."""
    import huggingface_hub

    listings = {freepih.DEFAULT_WEIGHTS: SD15_REPO_FILES, hspace.DEFAULT_WEIGHTS: DDPM_REPO_FILES}
    fetched: list[tuple[str, str]] = []

    def list_repo_files(repo_id, revision=None, **kwargs):
        if repo_id not in listings:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"{repo_id} not found")
        return list(listings[repo_id])

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):
        assert filename in listings[repo_id]
        fetched.append((repo_id, filename))
        path = tmp_path / "hub" / repo_id.replace("/", "--") / "snapshots" / (revision or "main") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return fetched


def test_each_method_lists_exactly_the_files_it_loads():
    listing = hub.method_files()
    assert listing == {"hspace": (hspace.DEFAULT_WEIGHTS, hspace.HUB_FILES),
                       "freepih": (freepih.DEFAULT_WEIGHTS, freepih.HUB_FILES)}
    for _, files in listing.values():
        assert not any(name.endswith((".ckpt", ".bin")) or "non_ema" in name or "safety_checker" in name
                       for name in files)
    # fp16 safetensors where SD-1.5 publishes them
    assert [n for n in freepih.HUB_FILES if n.endswith(".safetensors")] == [
        "text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors"]


def test_fetch_weights_downloads_exactly_the_listed_files(stand_in_hub, capsys):
    assert main(["fetch-weights", "freepih"]) == 0
    assert stand_in_hub == [(freepih.DEFAULT_WEIGHTS, name) for name in freepih.HUB_FILES]
    out = capsys.readouterr().out
    assert "11 files" in out and "snapshots" in out
    stand_in_hub.clear()
    assert main(["fetch-weights", "hspace", "--repo", hspace.DEFAULT_WEIGHTS]) == 0
    assert sorted(name for _, name in stand_in_hub) == sorted(hspace.HUB_FILES)


def test_fetch_weights_refuses_methods_without_hub_weights_and_unpublished_files(stand_in_hub, monkeypatch, capsys):
    assert main(["fetch-weights", "reinhard"]) == 2
    assert "loads nothing from the Hub" in capsys.readouterr().err
    DDPM_REPO_FILES_BIN_ONLY = [n for n in DDPM_REPO_FILES if not n.endswith(".safetensors")]
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: DDPM_REPO_FILES_BIN_ONLY)
    assert main(["fetch-weights", "hspace"]) == 2
    assert "does not publish diffusion_pytorch_model.safetensors" in capsys.readouterr().err
    assert stand_in_hub == []  # nothing fetched before the listing was checked


def test_a_permitted_download_in_the_studio_fetches_the_same_list(stand_in_hub, monkeypatch):
    monkeypatch.setenv(components.ALLOW_DOWNLOAD_ENV, "1")
    folder = components.resolve(freepih.DEFAULT_WEIGHTS, freepih.HUB_FILES, "freepih")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(freepih.HUB_FILES)
    stand_in_hub.clear()
    with pytest.raises(FileNotFoundError, match="fetch-weights freepih"):  # no list, no download
        monkeypatch.delenv(components.ALLOW_DOWNLOAD_ENV)
        components.resolve(freepih.DEFAULT_WEIGHTS, freepih.HUB_FILES, "freepih")
    monkeypatch.setenv(components.ALLOW_DOWNLOAD_ENV, "1")
    with pytest.raises(FileNotFoundError):
        components.resolve(freepih.DEFAULT_WEIGHTS)  # without a file list nothing is downloaded
    assert stand_in_hub == []


def test_the_unavailable_reason_says_how_to_fetch_exactly_those_files():
    state = freepih.FreePIH().available()
    assert not state and "python -m harmony_core fetch-weights freepih" in state.reason
    assert components.ALLOW_DOWNLOAD_ENV in state.reason


def test_a_cached_snapshot_is_used_and_only_missing_lists_are_fetched(stand_in_hub, monkeypatch, tmp_path):
    """A cache made otherwise (plain fp32 files, no fp16 variants) is used as it is when downloads are
    off; when they are on and a listed file is missing, exactly the list is fetched."""
    cached = tmp_path / "cache-snapshot"
    (cached / "unet").mkdir(parents=True)
    (cached / "unet" / "diffusion_pytorch_model.safetensors").write_text("plain")
    monkeypatch.setattr(components, "_cached_snapshot", lambda repo_id: cached)
    assert components.resolve(freepih.DEFAULT_WEIGHTS, freepih.HUB_FILES, "freepih") == cached
    assert stand_in_hub == []
    monkeypatch.setenv(components.ALLOW_DOWNLOAD_ENV, "1")
    folder = components.resolve(freepih.DEFAULT_WEIGHTS, freepih.HUB_FILES, "freepih")
    assert folder != cached and [name for _, name in stand_in_hub] == list(freepih.HUB_FILES)
