"""House rules that keep the README, CI and packaging honest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_that_ci_runs_verbatim():
    commands = readme_commands()
    assert len(commands) == 2
    assert "mmbench run --method joint --dataset synthetic" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci, f".ci/run must run the README command: {command}"


@pytest.mark.slow
def test_a_normal_install_finds_every_builtin_plugin(tmp_path):
    target, source = tmp_path / "site", tmp_path / "src"
    # Build from a copy so that setuptools' build/ folder never lands in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "results", "*.egg-info",
                                                                 "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    probe = ("import mmbench; from mmbench.registry import METHODS, DATASETS; "
             "print(mmbench.__file__); print(','.join(METHODS.names())); print(','.join(DATASETS.names()))")
    installed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                               check=True, env={**os.environ, "PYTHONPATH": str(target)}).stdout.split()
    assert installed[0].startswith(str(target)), "the probe must import the installed copy"
    editable = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.split()
    assert installed[1:] == editable[1:], "both installs must find the same built-in plugins"
    assert {"joint", "unimodal"} <= set(installed[1].split(",")) and "synthetic" in installed[2]
    assert not (target / "methods").exists() and not (target / "datasets").exists(), \
        "never install top-level packages named methods or datasets"


def test_user_facing_text_cites_only_files_in_the_repository():
    """Issue 15.7: messages and --help cited STATS.md, DATA.md (not in the repository)."""
    from typer.testing import CliRunner

    from mmbench.cli import app

    texts = {path.name: path.read_text() for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    for command in ("run", "sweep", "report", "check", "prepare", "fixtures", "list"):
        texts[f"mmbench {command} --help"] = CliRunner().invoke(app, [command, "--help"]).output
    texts["mmbench report notes"] = (ROOT / "mmbench" / "report.py").read_text()  # its notes are printed
    for where, text in texts.items():
        for cited in set(re.findall(r"[\w./-]+\.md\b", text)) - {"report.md"}:  # report.md: its output
            assert (ROOT / cited).is_file() or (ROOT / "docs" / cited).is_file(), f"{where} cites {cited}"
