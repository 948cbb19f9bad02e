"""Secret and ConfigMap volumes (also as sources of a `projected` volume) for the sandbox's local
pods, as a kubelet projects them.

`projected_files` (pure) turns a volume source and the object's data into the files to write: every key,
or only the listed `items` (a missing listed key is a mount error unless the volume is optional), each with
its item `mode` or the volume's `defaultMode` (0644 when unset). `write_files` is the edge: it replaces the
volume directory's files (removing read-only ones first, so that a restart can write them again).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

DEFAULT_MODE = 0o644


class MountFailure(RuntimeError):
    """The volume cannot be set up (yet): shown as the container's waiting message, retried."""


@dataclass(frozen=True)
class ProjectedFile:
    path: str  # relative to the volume directory
    content: bytes
    mode: int


@dataclass(frozen=True)
class VolumeSource:
    volume: str  # the pod's volume name
    kind: str  # "secret" | "configmap"
    object_name: str
    source: Mapping[str, Any]

    @property
    def optional(self) -> bool:
        return bool(self.source.get("optional"))


def volume_sources(pod: Mapping[str, Any]) -> list[VolumeSource]:
    """The pod's secret and configMap volumes (what the runner must fetch before starting it); a
    projected volume gives one source per secret / configMap it merges, all under its name (with its
    defaultMode unless an item sets a mode)."""
    found = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("secret") is not None:
            source = volume["secret"]
            found.append(VolumeSource(volume["name"], "secret", source.get("secretName", ""), source))
        elif volume.get("configMap") is not None:
            source = volume["configMap"]
            found.append(VolumeSource(volume["name"], "configmap", source.get("name", ""), source))
        elif volume.get("projected") is not None:
            mode = volume["projected"].get("defaultMode", DEFAULT_MODE)
            for part in volume["projected"].get("sources") or []:
                for key, kind in (("secret", "secret"), ("configMap", "configmap")):
                    if part.get(key) is not None:
                        source = {**part[key], "defaultMode": mode}
                        found.append(VolumeSource(volume["name"], kind, source.get("name", ""), source))
    return found


def object_data(kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    """Key -> bytes of a Secret (base64 `data`, plain `stringData`) or a ConfigMap (`data`, `binaryData`)."""
    if kind == "secret":
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return data
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def mount_failure(volume: VolumeSource, why: str) -> str:
    """The kubelet's wording of a failed volume setup."""
    return f'MountVolume.SetUp failed for volume "{volume.volume}" : {why}'


def missing_object_message(volume: VolumeSource) -> str:
    kind = "secret" if volume.kind == "secret" else "configmap"
    return mount_failure(volume, f'{kind} "{volume.object_name}" not found')


def _safe_relative(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise ValueError(f"volume item path {path!r} must be relative and must not contain '..'")
    return str(PurePosixPath(*parts))


def projected_files(volume: VolumeSource, data: Mapping[str, bytes]) -> list[ProjectedFile]:
    """The files the volume shows, sorted by path. Raises MountFailure for a listed key that is missing."""
    default_mode = int(volume.source.get("defaultMode", DEFAULT_MODE))
    items = volume.source.get("items")
    if not items:
        return [ProjectedFile(_safe_relative(key), data[key], default_mode) for key in sorted(data)]
    files = []
    for item in items:
        key = item["key"]
        if key not in data:
            if volume.optional:
                continue
            kind = "secret" if volume.kind == "secret" else "configmap"
            why = f'{kind} "{volume.object_name}" has no key "{key}"'
            raise MountFailure(mount_failure(volume, why))
        files.append(
            ProjectedFile(_safe_relative(item["path"]), data[key], int(item.get("mode", default_mode)))
        )
    return sorted(files, key=lambda f: f.path)


def write_files(directory: Path, files: list[ProjectedFile]) -> None:
    """Make `directory` hold exactly these files with their modes (what the container then reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f.path for f in files}
    for existing in sorted(directory.rglob("*"), reverse=True):
        relative = existing.relative_to(directory).as_posix()
        if existing.is_file() and relative not in wanted:
            existing.unlink()
    for file in files:
        target = directory / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # it may be read-only (0400) from the container's previous start
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(file.content)
        os.chmod(target, file.mode)
