"""What a new user meets first: help text, the README reference, completions, --version,
`python -m apstorage`, and a fast `--help` that imports no heavy library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apstorage import __version__
from apstorage.cli import reference

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_and_option_has_help_text() -> None:
    missing = []
    for path, command, _ in reference.walk(reference.root_command()):
        name = " ".join(path)
        if not (command.help or "").strip():
            missing.append(name)
        for param in command.params:
            if param.name in ("help",):
                continue
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{name} {param.name}")
    assert missing == []


def test_the_readme_reference_matches_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reference.readme_with_reference(readme) == readme, (
        "README.md's command reference is stale: run `python -m apstorage.cli.reference --write`"
    )


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for path, _, _ in reference.walk(reference.root_command()):
        if len(path) > 1:
            assert f"### `{' '.join(path)}`" in readme


@pytest.mark.parametrize("shell, name", sorted(reference.SHELLS.items()))
def test_completion_scripts_match_what_typer_generates(shell: str, name: str) -> None:
    committed = (ROOT / "completions" / name).read_text()
    assert committed == reference.completion(shell), (
        f"completions/{name} is stale: run `python -m apstorage.cli.reference --write`"
    )


def _complete(shell_env: dict[str, str]) -> str:
    env = dict(os.environ, _APSTORAGE_COMPLETE=shell_env.pop("mode"), **shell_env)
    proc = subprocess.run([sys.executable, "-m", "apstorage"], env=env, capture_output=True, text=True, timeout=60)
    return proc.stdout


def test_bash_completion_loads_and_offers_the_subcommands() -> None:
    script = ROOT / "completions" / "apstorage.bash"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # Source it in a real bash and ask the completion function what `apstorage mi<TAB>` offers.
    probe = (
        f"source {script}; "
        "COMP_WORDS=(apstorage mi); COMP_CWORD=1; "
        "_apstorage_completion apstorage; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    shim = shutil.which("apstorage", path=env["PATH"])
    assert shim, "the apstorage console script is not installed"
    out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "migrate-to-s3" in out.stdout.split(), out.stderr


@pytest.mark.parametrize("shell, flag", [("zsh", "-n"), ("fish", "--no-execute")])
def test_zsh_and_fish_scripts_parse_where_the_shell_is_installed(shell: str, flag: str) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} is not installed on this machine (bash is always checked)")
    name = reference.SHELLS[shell]
    subprocess.run([exe, flag, str(ROOT / "completions" / name)], check=True)


def test_subcommand_completion_through_typer() -> None:
    out = _complete({"mode": "complete_zsh", "_TYPER_COMPLETE_ARGS": "apstorage lifecycle "})
    assert "apply" in out and "show" in out


def test_version_and_python_dash_m() -> None:
    for cmd in (["apstorage", "--version"], [sys.executable, "-m", "apstorage", "--version"]):
        exe = shutil.which(cmd[0]) if cmd[0] == "apstorage" else cmd[0]
        assert exe, "the apstorage console script is not installed"
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == f"apstorage {__version__}"


def test_help_imports_neither_boto3_nor_psycopg() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "apstorage", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not imported & {"boto3", "botocore", "psycopg", "rich.markdown"}
    for path, _, _ in reference.walk(reference.root_command()):
        if len(path) > 1:
            assert path[-1] in proc.stdout or len(path) > 2
