"""The documentation: the site builds with no warning, the README stays short and its links resolve,
and nothing cites a file that is not in the repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
#: Names of documents that were never part of the repository; the method lives in docs/design/method.md.
MISSING_DOCS = re.compile(r"SPEC\.md|SPEC §|STACK\.md|ANCHORS\.md")
CHECKED_SUFFIXES = (".py", ".md", ".toml", ".yaml", ".yml")


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    names = [n for n in out.decode().split("\0") if n]
    return [REPO / n for n in names if n.endswith(CHECKED_SUFFIXES) or Path(n).name == "Makefile"]


@pytest.mark.slow
def test_mkdocs_build_strict_succeeds(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("VIR_REQUIRE_DOCS"):
            pytest.fail(
                "VIR_REQUIRE_DOCS=1 but mkdocs is not installed; install the docs extra (pip install -e '.[docs]')",
                pytrace=False,
            )
        pytest.skip("mkdocs not installed (the docs extra)")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        NO_MKDOCS_2_WARNING="1",
    )
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(REPO / "mkdocs.yml"),
        "-d",
        str(tmp_path / "site"),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "predict-large" in cli_page and "--trainer.max_epochs" in cli_page, "the CLI reference lacks --help text"


def test_readme_is_at_most_250_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}); move detail into docs/"
    )


def test_no_tracked_file_cites_a_document_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MISSING_DOCS.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not offenders, (
        "these lines cite SPEC.md / STACK.md / ANCHORS.md, which are not in the repository "
        "(the method is docs/design/method.md §1-§7):\n" + "\n".join(offenders)
    )


def _relative_links(markdown: str) -> list[str]:
    without_code = re.sub(r"```.*?```", "", markdown, flags=re.S)
    without_code = re.sub(r"`[^`\n]*`", "", without_code)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_readme_relative_links_point_to_existing_files():
    links = _relative_links((REPO / "README.md").read_text(encoding="utf-8"))
    assert links, "README.md has no relative links: the docs map is missing"
    missing = [t for t in links if not (REPO / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
