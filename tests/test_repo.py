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
    texts["mmbench report notes"] = (ROOT / "mmbench" / "analysis" / "report.py").read_text()  # its notes are printed
    for where, text in texts.items():
        for cited in set(re.findall(r"[\w./-]+\.md\b", text)) - {"report.md"}:  # report.md: its output
            assert (ROOT / cited).is_file() or (ROOT / "docs" / cited).is_file(), f"{where} cites {cited}"


def _module_imports(path: Path, module_level_only: bool) -> set[str]:
    """The mmbench modules that a source file imports (at its top level only, or anywhere)."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmbench"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                where = ROOT / full.replace(".", "/")
                found.add(full if where.with_suffix(".py").is_file() or where.is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mmbench")}
    return found


def test_the_package_is_grouped_by_concern_and_its_modules_import_without_cycles():
    """Issue 17: data/, train/, analysis/, scheduler/ beside the shared config, registry and results; no module
    imports one that imports it back when the package loads, and the report no longer imports its renderings."""
    package = ROOT / "mmbench"
    flat = sorted(p.stem for p in package.glob("*.py"))
    assert flat == ["__init__", "cli", "config", "cpus", "listing", "method", "registry", "results"], flat
    graph = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _module_imports(path, module_level_only=True)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(dep == target or (dep not in seen and not seen.add(dep) and reaches(dep, target, seen))
                   for dep in graph.get(start, ()))

    cycles = [(a, b) for a, deps in graph.items() for b in deps if b != a and reaches(b, a, set())]
    assert not cycles, cycles
    report = _module_imports(package / "analysis" / "report.py", module_level_only=False)
    assert not {"mmbench.analysis.render", "mmbench.analysis.plots"} & report
