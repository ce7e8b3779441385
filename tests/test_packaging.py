"""The install metadata stays consistent: pyproject.toml, environment.yml, README, CI."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent

# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _split_requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", text)
    assert match, text
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + list(meta["optional-dependencies"]["dev"])
    return dict(_split_requirement(r) for r in reqs)


def _environment_requirements() -> dict[str, str]:
    reqs: dict[str, str] = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        m = re.match(r"^  - ([^:]+)$", line)
        if in_deps and m:
            name, spec = _split_requirement(m.group(1))
            if name in ("python", "pip"):
                continue
            reqs[CONDA_TO_PYPI.get(name, name)] = spec
    return reqs


def test_environment_yml_declares_the_same_packages_as_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_environment_yml_installs_the_project_with_pip():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s+- -e \.$", text, re.M)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Run the tests", 1)[1]
    command = re.search(r"```(?:bash|sh)?\n(.+?)\n```", block, re.S).group(1).strip().splitlines()[-1]
    command = re.sub(r"^(\w+=\S+\s+)+", "", command)  # environment assignments are set by CI itself
    command = command.replace("python ", "python3 ", 1)
    assert command in (ROOT / ".ci" / "run").read_text()


def test_console_script_and_module_entry_point():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["srlib"] == "srlib.cli:main"
    assert (ROOT / "srlib" / "__main__.py").exists()
