"""The project's images' entrypoints, read from their Dockerfiles: a container without ``command`` runs
its image's ``ENTRYPOINT`` (then ``args``), as a container runtime does. Images are matched by repository
name (``ghcr.io/bloomz-operator/operator:0.1.0`` -> ``docker/operator.Dockerfile``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

DOCKER_DIR = Path(__file__).resolve().parents[3] / "docker"


def parse_entrypoint(dockerfile_text: str) -> list[str] | None:
    """The last exec-form ``ENTRYPOINT ["..."]`` of a Dockerfile (None without one)."""
    found: list[str] | None = None
    for line in dockerfile_text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "ENTRYPOINT" and rest.strip().startswith("["):
            words = json.loads(rest)
            if isinstance(words, list) and all(isinstance(w, str) for w in words):
                found = words
    return found


def read_entrypoints(docker_dir: Path = DOCKER_DIR) -> dict[str, list[str]]:
    """Image repository name -> entrypoint, for every ``<name>.Dockerfile`` with an exec-form ENTRYPOINT."""
    entrypoints: dict[str, list[str]] = {}
    for path in sorted(docker_dir.glob("*.Dockerfile")) if docker_dir.is_dir() else []:
        words = parse_entrypoint(path.read_text(encoding="utf-8"))
        if words:
            entrypoints[path.name.removesuffix(".Dockerfile")] = words
    return entrypoints


def repository_name(image: str) -> str:
    """``registry/org/name:tag@sha256:...`` -> ``name``."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def entrypoint_of(image: str, entrypoints: Mapping[str, Sequence[str]]) -> list[str] | None:
    words = entrypoints.get(repository_name(image))
    return list(words) if words else None
