"""Fixtures for the packaging tests: the chart rendered with helm, the repository's paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bloomz-operator"
HERE = Path(__file__).resolve().parent
NAMESPACED_VALUES = HERE / "values-namespaced.yaml"
RELEASE = "bloomz"
RELEASE_NAMESPACE = "bloomz-system"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def find_tool(name: str) -> str:
    """A command-line tool from the project's .tools/bin or .venv/bin (what scripts/setup-env.sh installs)."""
    for folder in (REPO / ".tools" / "bin", REPO / ".venv" / "bin"):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make setup` (scripts/install-tools.sh) first")
    return found


def run(args: Sequence[str], *, check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm_template(*extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        [find_tool("helm"), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *extra],
        check=check,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render() -> Render:
    """helm template with extra arguments -> the rendered objects (cached: rendering takes a helm process)."""
    cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def _render(*extra: str) -> list[dict[str, Any]]:
        if extra not in cache:
            cache[extra] = documents(helm_template(*extra).stdout)
        return cache[extra]

    return _render


def only(objects: list[dict[str, Any]], kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def single(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = only(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
