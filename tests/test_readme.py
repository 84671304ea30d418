"""The README's shell commands work verbatim (issue 11, Deliver 4).

Every command of every ```bash block of ``README.md`` is extracted (``\\`` continuations
joined, ``;``/``&&`` lists split, comments dropped) and run the cheapest way that still
proves it works:

* ``securefed run ...`` as ``securefed run ... --dry-run`` (every check the run makes,
  the plan; no Flower process);
* the fast ``securefed`` commands (``check``, ``methods``, ``backbones``, ``datasets``,
  ``privacy``, ``secagg``, ``--version``) as they are;
* any other ``securefed`` command (one that reads a finished run, say) as
  ``securefed <command> --help``, every ``--option`` of the line in its help;
* ``flwr ...`` as ``flwr <command> --help`` with the line's own environment, every
  ``--option`` of the line in its help, and for ``flwr run`` the ``flower-superlink``
  that ``flwr`` starts found on the line's ``PATH`` in a shell whose virtualenv is
  *not* activated (the README's line once failed there);
* ``make <target>``: the target exists in the Makefile.

A command of any other program fails the test: give it a handler here. ``.venv/bin``
is the virtualenv ``make`` creates; where a checkout has none (a worktree), the one
running the tests stands in for it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
BIN = VENV_BIN if VENV_BIN.is_dir() else Path(sys.executable).parent
#: securefed commands that are fast enough to run as they are.
FAST = {"check", "methods", "backbones", "datasets", "privacy", "secagg", "--version",
        "--help"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One README command: its text, environment assignments and argv."""

    text: str
    env: dict[str, str]
    argv: list[str]

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name


def bash_blocks(markdown: str) -> list[str]:
    """The bodies of the ```bash fenced blocks."""
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S)


def _bare_path() -> str:
    """``PATH`` of a shell whose virtualenv is not activated."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() not in {BIN.resolve(), VENV_BIN.resolve()}]
    return os.pathsep.join(keep)


def _local(word: str) -> str:
    """``.venv/bin`` of this checkout, or the test interpreter's stand-in."""
    if BIN == VENV_BIN:
        return word
    return re.sub(rf"(?:{re.escape(str(ROOT))}/)?\.venv/bin", lambda _: str(BIN), word)


def _expand(value: str, scope: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` as the shell expands them (unset: empty)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: scope.get(m[1], ""), value)


def parse(line: str) -> list[Command]:
    """Split one logical line into commands (``;``, ``&&``, ``||``), without comments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for token in [*lexer, ";"]:
        if token in (";", "&&", "||"):
            if words:
                commands.append(words)
            words = []
        else:
            words.append(token)
    out = []
    variables = {"PWD": str(ROOT), "PATH": _bare_path(), "HOME": str(Path.home())}
    for words in commands:
        env: dict[str, str] = {}
        while words and _ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = _local(_expand(value, {**variables, **env}))
        out.append(Command(line, env, [_local(w) for w in words]))
    return out


def readme_commands() -> list[Command]:
    """Every command of the README's bash blocks, in order."""
    commands = []
    for block in bash_blocks(README.read_text(encoding="utf-8")):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                commands.extend(parse(line))
    return commands


def _options(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def _securefed(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    from securefed.cli import app

    assert (BIN / "securefed").is_file(), f"{BIN / 'securefed'} missing"
    args = cmd.argv[1:]

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError(f"{cmd.text!r} started a process")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the checkout
    for name, value in cmd.env.items():
        monkeypatch.setenv(name, value)
    if args and args[0] == "run":
        args = [*args, "--dry-run"]
    elif args and args[0] not in FAST:
        args = [args[0], "--help"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (cmd.text, res.output, res.exception)
    if args[-1] == "--help":
        for option in _options(cmd.argv):
            assert option in res.output, (cmd.text, option)


def _flwr(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    program = Path(cmd.argv[0])
    assert program.is_file(), f"{program} missing"
    env = {**os.environ, "PATH": _bare_path(), **cmd.env}
    sub = [a for a in cmd.argv[1:2] if not a.startswith("-")]
    res = subprocess.run([str(program), *sub, "--help"], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, (cmd.text, res.stdout, res.stderr)
    for option in _options(cmd.argv):
        assert option in res.stdout, (cmd.text, option)
    if sub == ["run"]:  # flwr starts flower-superlink from PATH
        assert shutil.which("flower-superlink", path=env["PATH"]), (
            f"{cmd.text!r}: flower-superlink is not on the line's PATH")


def _make(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in (a for a in cmd.argv[1:] if not a.startswith("-") and "=" not in a):
        assert re.search(rf"^{re.escape(target)}\s*:", makefile, flags=re.M), (
            f"{cmd.text!r}: no Makefile target {target!r}")


HANDLERS: dict[str, Callable[[Command, pytest.MonkeyPatch], None]] = {
    "securefed": _securefed, "flwr": _flwr, "make": _make}

COMMANDS = readme_commands()


def test_the_readme_has_commands_of_every_kind() -> None:
    programs = {c.program for c in COMMANDS}
    assert {"securefed", "flwr", "make"} <= programs
    assert any(c.argv[1:2] == ["run"] for c in COMMANDS if c.program == "securefed")


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c.argv[1:4]) for c in COMMANDS])
def test_readme_command_works_verbatim(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = HANDLERS.get(cmd.program)
    assert handler is not None, (f"README command {cmd.text!r}: no handler for "
                                 f"{cmd.program!r} in tests/test_readme.py ({sorted(HANDLERS)})")
    handler(cmd, monkeypatch)


def test_the_plain_flwr_line_without_path_would_fail() -> None:
    """The check above catches the reported failure: without the ``PATH=`` prefix, a
    shell without the activated virtualenv finds no ``flower-superlink``."""
    line = ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 .venv/bin/flwr run . "
            "--federation-config num-supernodes=10 --stream")
    (cmd,) = parse(line)
    if shutil.which("flower-superlink", path=_bare_path()):
        pytest.skip("flower-superlink is installed outside the virtualenv here")
    with pytest.raises(AssertionError, match="flower-superlink is not on the line's PATH"):
        _flwr(cmd, pytest.MonkeyPatch())
