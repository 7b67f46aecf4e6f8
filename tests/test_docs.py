"""The documentation stays true to the tree: every setting documented, every link alive.

docs/configuration.md is the one reference for settings and limits (issue 10 item 5), so
a setting added to core/settings.py without a row there fails here, and so does a row
for a setting that no longer exists. The README is a front door (issue 9 item 7): short,
and its links, like those of docs/, lead somewhere.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "core" / "settings.py"
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_MAX_LINES = 200
# Variables read by dev and test tooling, documented under this heading, not in settings.
OUTSIDE_SETTINGS_HEADING = "## Not in core/settings.py"
# Pages other work streams are writing; the README and docs/ link to them already. Until
# each lands, a link to it is not checked; once the file exists it is checked like any.
PENDING_PAGES = frozenset({"docs/guard.md", "docs/security.md", "docs/csv.md"})

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_ROW_NAME = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", re.M)


def setting_names() -> set[str]:
    """Every variable name core/settings.py passes to ``config(...)``."""
    names = set()
    for node in ast.walk(ast.parse(SETTINGS.read_text(), str(SETTINGS))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "config"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def documented_settings() -> tuple[set[str], set[str]]:
    """Names in the first column of configuration.md's tables: (settings, tooling)."""
    text = CONFIGURATION.read_text()
    settings_part, _, outside_part = text.partition(OUTSIDE_SETTINGS_HEADING)
    return set(_ROW_NAME.findall(settings_part)), set(_ROW_NAME.findall(outside_part))


def test_settings_module_is_parsed() -> None:
    names = setting_names()
    # Guards the parser itself: a handful it must always find, multi-line calls included.
    assert {"REDIS_URL", "JWT_SECRET", "CHAT_SYSTEM_PROMPT", "UPLOAD_RATE_LIMIT"} <= names
    assert len(names) > 50


def test_every_setting_is_documented() -> None:
    documented, _ = documented_settings()
    missing = sorted(setting_names() - documented)
    assert not missing, f"add a row to docs/configuration.md for: {missing}"


def test_no_documented_setting_is_stale() -> None:
    documented, _ = documented_settings()
    stale = sorted(documented - setting_names())
    assert not stale, f"docs/configuration.md documents settings that do not exist: {stale}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def github_anchors(path: Path) -> set[str]:
    """Heading anchors as GitHub renders them: lower case, punctuation dropped, - for spaces."""
    anchors = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text())
    return [
        target
        for target in _LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        name = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else ""
        if not resolved.exists():
            if name not in PENDING_PAGES:
                broken.append(target)
            continue
        if anchor and resolved.suffix == ".md" and anchor not in github_anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_link_checker_sees_links() -> None:
    # The README links to docs/api.md; a regex that matched nothing would pass vacuously.
    assert "docs/api.md" in relative_links(ROOT / "README.md")
