"""Every `trackside ...` command shown in README.md and docs/*.md names a command that exists and
options that command accepts: the docs stay true when the CLI changes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.core import TyperCommand, TyperGroup

from gateway.cli import build_app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# `trackside` where a command starts: at the line's start (after a prompt, a path such as
# `.venv/bin/`, or `sudo [-u user]`), or after `&&`, `;`, `|`, `$(`; up to a comment or the
# next command.
COMMAND = re.compile(
    r"(?:^|&&|;|\||\$\(|\$\s)\s*(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:\S*/)?trackside\s+([^#;&|)\n]+)",
    re.MULTILINE,
)


def _commands() -> list[tuple[str, str]]:
    """(page:line, command text) of every `trackside` command in a fenced block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.finditer(text):
            line = text.count("\n", 0, block.start(1)) + 1
            # One logical line per command: continued lines (a trailing backslash) joined.
            for logical in re.split(r"(?<!\\)\n", block.group(1)):
                for match in COMMAND.finditer(logical.replace("\\\n", " ")):
                    found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1).strip()))
                line += logical.count("\n") + 1
    return found


COMMANDS = _commands()
CLI = typer.main.get_command(build_app())


def _accepted(command: TyperCommand | TyperGroup) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {
        "--help"
    }


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 30  # the extraction finds the docs' commands


@pytest.mark.parametrize(("where", "text"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_exists_with_the_options_it_names(where: str, text: str) -> None:
    words = [w.strip("[]") for w in shlex.split(text, posix=True)]  # [--optional VALUE]
    command = CLI
    path = ["trackside"]
    while isinstance(command, TyperGroup) and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        assert sub is not None, f"{where}: `{' '.join(path)}` has no command {words[0]!r}"
        assert isinstance(sub, TyperCommand | TyperGroup)
        path.append(words.pop(0))
        command = sub
    assert not isinstance(command, TyperGroup) or "--help" in words, (
        f"{where}: `{' '.join(path)}` needs a command"
    )
    accepted = _accepted(command)
    named = [w.split("=", 1)[0] for w in words if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", w)]
    unknown = [option for option in named if option not in accepted]
    assert not unknown, f"{where}: `{' '.join(path)}` has no option {', '.join(unknown)}"
    if path == ["trackside", "deploy"] and "--user" in words and "--device-id" in words:
        # The gateway's registry names a device's account after its id (gateway/registry.py).
        user, device_id = (words[words.index(o) + 1] for o in ("--user", "--device-id"))
        assert user == f"device-{device_id}", f"{where}: --user is not the device's account"
