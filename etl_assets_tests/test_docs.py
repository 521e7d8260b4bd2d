"""The documentation stays true where a test can check it: every ``etl-assets`` command in a shell
block of README.md or docs/ parses with the CLI's own argument parser, every relative link points to
a file that exists, and README stays a short entry page."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from etl_assets.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)


def commands(page: Path) -> list[str]:
    """Every ``etl-assets …`` invocation in the page's shell blocks (after ``&&``, ``;`` or ``$``)."""
    found = []
    for block in FENCE.findall(page.read_text()):
        for line in block.splitlines():
            for part in re.split(r"&&|;|\|\|", line):
                part = part.strip().removeprefix("$ ").strip()
                if part.startswith("etl-assets "):
                    found.append(part)
    return found


CASES = [(page.relative_to(ROOT).as_posix(), cmd) for page in PAGES for cmd in commands(page)]


def test_the_docs_show_commands() -> None:
    assert len(CASES) >= 10, CASES


@pytest.mark.parametrize(("page", "command"), CASES)
def test_every_documented_command_parses(page: str, command: str) -> None:
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports a bad command line by exiting
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")
    assert callable(args.handler)


def test_relative_links_point_to_files() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_is_a_short_entry_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_blocks = FENCE.findall(text)[:2]
    assert first_blocks[0].strip() == "pip install -e . && etl-assets run"
    assert first_blocks[1].strip() == "pip install -e '.[test]' && pytest -n 2"


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "etl_assets").rglob("*.py"))
    used = set(re.findall(r"\"(ETL_[A-Z0-9_]+)\"", code))
    documented = set(re.findall(r"`(ETL_[A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    assert used - documented == set()


def test_every_command_and_flag_is_in_the_command_line_page() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, command in sub.choices.items():
        if f"`etl-assets {name}" not in page:
            missing.append(name)
        for action in command._actions:
            flags = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
            if flags and not any(f in page for f in flags):
                missing.append(f"{name} {flags[0]}")
    assert missing == []
