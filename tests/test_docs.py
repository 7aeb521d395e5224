"""The README and the docs/ pages: every relative link resolves, every page is linked from the
README, and every command shown in a code block parses (its options exist)."""

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.cli.zoo import parse_command
from harness.cli.zoo_command import main_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_lines(page: Path) -> list[str]:
    """Command lines of the page's code blocks, continuations joined, comments dropped."""
    lines, block, pending = [], False, ""
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(re.split(r"\s+#\s", line)[0].strip())
    return lines


def commands(*programs: str) -> list[tuple[str, list[str]]]:
    """(page: line, tokens after the program) of every shown command running `programs`."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value first
                tokens.pop(0)
            if tokens and Path(tokens[0]).name in programs:
                found.append((f"{page.name}: {line}", tokens[1:]))
    return found


@cache
def pytest_options() -> frozenset[str]:
    """Every long option `pytest --help` lists here (llmgate's, pytest's, xdist's)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return frozenset(re.findall(r"(--[a-z][a-z0-9_-]*)", out))


def test_every_relative_link_resolves_and_every_page_is_linked_from_the_readme():
    broken = [f"{page.name}: {target}" for page in PAGES
              for target in LINK.findall(page.read_text())
              if not re.match(r"[a-z]+:", target) and not target.startswith("#")
              and not (page.parent / target.split("#")[0]).exists()]
    assert broken == []
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    assert [p.name for p in PAGES[1:] if f"docs/{p.name}" not in linked] == []


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


@pytest.mark.parametrize("where, args", commands("pytest"))
def test_every_pytest_command_shown_uses_options_that_exist(where, args):
    unknown = [a.split("=")[0] for a in args
               if a.startswith("--") and a.split("=")[0] not in pytest_options()]
    assert unknown == [], where


@pytest.mark.parametrize("where, args", commands("llmgate"))
def test_every_llmgate_command_shown_parses(where, args):
    if args[0] == "zoo":
        command = parse_command(args[1:])
        if command.script == "main.py":
            main_parser().parse_args(command.args)
        else:
            build_parser().parse_args(["weights", *command.args])
        return
    parsed, rest = build_parser().parse_known_args(args)
    if parsed.command == "run":  # the rest goes to pytest
        unknown = [a.split("=")[0] for a in rest
                   if a.startswith("--") and a.split("=")[0] not in pytest_options()]
        assert unknown == [], where
    else:
        assert rest == [], where
