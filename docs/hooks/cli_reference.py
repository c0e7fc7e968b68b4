"""MkDocs hook: the CLI reference page, generated at build time from the code itself.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with the
``--help`` text of every command of ``python -m vir_lightning``, captured in-process: the LightningCLI
subcommands (``vir_lightning.cli.LIGHTNING_SUBCOMMANDS``) and the tools (``vir_lightning.cli.tools()``
where it exists, else ``vir_lightning.cli.TOOLS``: command → (module, one-line help)). A command whose
help cannot be captured is a warning, so ``mkdocs build --strict`` fails rather than publish a stale page.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys

log = logging.getLogger("mkdocs.hooks.cli_reference")

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
_cache: str | None = None


def _capture(run) -> str:
    """stdout of ``run()`` (a ``--help`` call), which may exit through SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["python -m vir_lightning"]  # argparse names the program after argv[0]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run()
        except SystemExit:
            pass
        finally:
            sys.argv = argv
    text = out.getvalue().strip()
    if not text:
        raise RuntimeError(f"no help text on stdout (stderr: {err.getvalue().strip()[:300]!r})")
    return text


def _registry(cli) -> dict[str, tuple[str, str]]:
    return cli.tools() if callable(getattr(cli, "tools", None)) else cli.TOOLS


def _fence(text: str, title: str = "--help") -> str:
    """A collapsible block (pymdownx.details) holding the help text verbatim."""
    body = "```text\n" + text.replace("```", "'''") + "\n```"
    return f'??? note "{title}"\n\n' + "\n".join("    " + line if line else "" for line in body.splitlines())


def _render() -> str:
    old_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        cli = importlib.import_module("vir_lightning.cli")
        usage = _capture(lambda: cli.main(["--help"]))
        parts = ["## `python -m vir_lightning --help`", "", "```text\n" + usage + "\n```"]
        parts += ["", "## Training commands (LightningCLI)", ""]
        for name, summary in cli.LIGHTNING_SUBCOMMANDS.items():
            parts += [f"### `{name}`", "", f"{summary}.", ""]
            try:
                parts.append(_fence(_capture(lambda name=name: cli.run_lightning([name, "--help"]))))
            except Exception as err:  # noqa: BLE001  (reported as a strict-mode warning)
                log.warning("cli_reference: `%s --help` could not be captured: %s", name, err)
            parts.append("")
        parts += ["## Tools", ""]
        for name, (module, summary) in _registry(cli).items():
            parts += [f"### `{name}`", "", f"{summary}. Module: `{module}`.", ""]
            try:
                main = importlib.import_module(module).main
                parts.append(_fence(_capture(lambda main=main: main(["--help"]))))
            except Exception as err:  # noqa: BLE001
                log.warning("cli_reference: `%s --help` could not be captured: %s", name, err)
            parts.append("")
        return "\n".join(parts)
    finally:
        if old_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old_columns


def on_page_markdown(markdown, page, config, files, **kwargs):
    global _cache
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("cli_reference: %s lacks the marker %s", PAGE, MARKER)
        return markdown
    if _cache is None:
        _cache = _render()
    return markdown.replace(MARKER, _cache)
