"""The Hugging Face Space configuration: README front matter for a Gradio-SDK (ZeroGPU) Space."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACES_CONFIG_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_build_command", "app_port", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub",
}
"""The keys of the Hub's Spaces configuration reference (docs/hub/spaces-config-reference)."""
REPO_CARD_KEYS = {"license", "license_name", "license_link"}
"""The licence keys every Hub repo card takes (models, datasets, Spaces)."""


def meta() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line)


def test_front_matter_uses_only_documented_keys():
    assert set(meta()) <= SPACES_CONFIG_KEYS | REPO_CARD_KEYS, set(meta()) - SPACES_CONFIG_KEYS - REPO_CARD_KEYS


def test_front_matter_is_a_zerogpu_gradio_space_on_the_pinned_gradio():
    from huggingface_hub import SpaceHardware

    card = meta()
    assert card["sdk"] == "gradio" and card["sdk_version"] == pins()["gradio"]  # ZeroGPU runs Gradio-SDK Spaces only
    assert (ROOT / card["app_file"]).is_file()
    assert card["python_version"] in ("3.10", "3.12")  # the versions the ZeroGPU docs list
    assert card["suggested_hardware"] == SpaceHardware.ZERO_A10G.value and len(card["short_description"]) <= 60
    assert card["colorFrom"] in ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
    assert card["colorTo"] in ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
    assert card["tags"] and all(isinstance(tag, str) for tag in card["tags"])


def test_the_licence_is_real():
    assert meta()["license"] == "apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_models_and_preloads_are_exactly_what_the_methods_load():
    from harmony_core.diffusion import hub
    from harmony_core.methods import freepih, hspace

    card = meta()
    assert {freepih.DEFAULT_WEIGHTS, hspace.DEFAULT_WEIGHTS} == set(card["models"])
    assert card["preload_from_hub"] == hub.preload_entries()
    for entry in card["preload_from_hub"]:
        repo, files = entry.split(" ")
        assert not any(name.endswith((".ckpt", ".bin")) or "non_ema" in name or "safety_checker" in name
                       for name in files.split(","))


def test_binaries_are_stored_with_lfs():
    rules = {line.split()[0]: line.split()[1:] for line in (ROOT / ".gitattributes").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    for pattern in ("*.safetensors", "*.jpg", "*.png"):
        assert {"filter=lfs", "diff=lfs", "merge=lfs", "-text"} <= set(rules[pattern]), pattern


def test_spaces_is_pinned():
    assert "spaces" in pins()
