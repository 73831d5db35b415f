"""The Hugging Face Space configuration: README front matter for a Gradio-SDK (ZeroGPU) Space."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line)


def test_front_matter_is_a_gradio_sdk_space_on_the_pinned_gradio():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins()["gradio"]  # ZeroGPU runs Gradio-SDK Spaces only
    assert (ROOT / meta["app_file"]).is_file() and meta["python_version"] and meta["license"]
    assert meta["suggested_hardware"].startswith("zero-") and len(meta["short_description"]) <= 60


def test_models_list_the_hub_ids_the_methods_load():
    from harmony_core.methods import freepih, hspace

    meta = yaml.safe_load((ROOT / "README.md").read_text().split("---\n")[1])
    assert {freepih.DEFAULT_WEIGHTS, hspace.DEFAULT_WEIGHTS} <= set(meta["models"])


def test_spaces_is_pinned():
    assert "spaces" in pins()
