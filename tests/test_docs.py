"""README.md and docs/: every relative link and anchor resolves, the API page lists every api_name,
and the README stays a short card (the manual lives in docs/)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The Markdown outside fenced code blocks and the front matter."""
    if text.startswith("---\n"):
        text = text.split("---\n", 2)[2]
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """The anchor GitHub and the Hub give a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(path: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(path.read_text()))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:: not checked offline
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading '#{anchor}' in {resolved.name}")
    assert not broken, broken


def test_the_link_checker_catches_dead_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title: `x` (y)\n\n[ok](#title-x-y) [dead](#gone) [file](b.md#nope)\n")
    (tmp_path / "b.md").write_text("# B\n")
    page = tmp_path / "a.md"
    assert anchors(page) == {"title-x-y"} and links(page) == ["#title-x-y", "#gone", "b.md#nope"]
    assert "nope" not in anchors(tmp_path / "b.md")


def test_readme_is_a_short_card_and_docs_hold_no_development_notes():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in PAGES:
        text = page.read_text().lower()
        for phrase in ("this session", "was lent", "no gpu was", "an earlier session", "a later session"):
            assert phrase not in text, f"{page.name}: {phrase!r}"


@pytest.mark.slow
def test_api_page_documents_every_api_name(tmp_path):
    import app

    documented = set(re.findall(r"`(/[a-z_]+)`", (ROOT / "docs" / "api.md").read_text()))
    endpoints = set(app.build_app(votes_dir=tmp_path / "votes").get_api_info()["named_endpoints"])
    assert endpoints and endpoints <= documented, sorted(endpoints - documented)
    assert documented <= endpoints, sorted(documented - endpoints)
