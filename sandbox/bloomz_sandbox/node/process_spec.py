"""Pod container -> local process: command, environment and paths. Pure functions, no side effects.

The sandbox runs a CPU pod's container as a process on this machine instead of in an image:
- `python3` / `python` as the first word becomes this interpreter (the stand-in for the image); a
  container without `command` runs its image's ENTRYPOINT (the project's images, from docker/);
- volumes become directories: a hostPath lives under the simulated node's root directory
  (<node root>/<hostPath>), a PVC under <node root>/persistentvolumeclaims/<namespace>/<claim>,
  anything else (emptyDir, configMap, ...) in an empty per-pod directory;
- every mountPath that starts a path in the args, the command or an env value is rewritten to
  the directory that backs it (the process sees host paths, not the container's);
- env values come from `value` or `valueFrom.fieldRef` (pod name, namespace, IP, node, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloomz_sandbox.node.images import entrypoint_of

_PYTHON_NAME = re.compile(r"^python(3(\.\d+)?)?$")
# Keys that a process must not inherit from the runner: they would point it at the sandbox's own
# API server or fix a port that several pods would then fight for.
_HOST_ONLY_ENV = ("KUBECONFIG", "MASTER_PORT", "MASTER_ADDR", "BLOOMZ_BIND_HOST")


class UnsupportedContainer(ValueError):
    """The container cannot run as a local process (the reason is shown in the pod status)."""


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: Path


@dataclass(frozen=True)
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    directories: list[Path]  # to create before starting (volume backing directories)


def host_path_on_node(node_root: Path, path: str) -> Path:
    """A node path (/var/lib/x) -> its place under the simulated node root."""
    return node_root / path.lstrip("/")


def volume_directories(pod: Mapping[str, Any], node_root: Path, pod_dir: Path) -> dict[str, Path]:
    """Volume name -> the local directory that backs it."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    directories: dict[str, Path] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        if volume.get("hostPath"):
            directories[name] = host_path_on_node(node_root, volume["hostPath"]["path"])
        elif volume.get("persistentVolumeClaim"):
            claim = volume["persistentVolumeClaim"]["claimName"]
            directories[name] = node_root / "persistentvolumeclaims" / namespace / claim
        else:
            directories[name] = pod_dir / "volumes" / name
    return directories


# hostPath types that a kubelet checks before mounting (DirectoryOrCreate / "" create or skip the check).
_HOST_PATH_KINDS = {"Directory": "a directory", "File": "a file", "Socket": "a socket"}


def host_path_requirements(pod: Mapping[str, Any], node_root: Path) -> list[tuple[str, Path, str]]:
    """(volume, local path, hostPath type) for hostPath volumes that must exist before the pod starts."""
    requirements = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        host_path = volume.get("hostPath") or {}
        if host_path.get("type") in _HOST_PATH_KINDS:
            local = host_path_on_node(node_root, host_path["path"])
            requirements.append((volume["name"], local, str(host_path["type"])))
    return requirements


def host_path_failure(volume: str, node_path: str, kind: str) -> str:
    """The kubelet's mount error for a hostPath whose type check failed."""
    return (
        f'MountVolume.SetUp failed for volume "{volume}" : hostPath type check failed: '
        f"{node_path} is not {_HOST_PATH_KINDS[kind]}"
    )


def container_mounts(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    """The container's mounts, longest container path first (so /models/a wins over /models)."""
    mounts: list[Mount] = []
    for mount in container.get("volumeMounts") or []:
        base = volumes.get(mount["name"])
        if base is None:
            raise UnsupportedContainer(f"volumeMount {mount['name']!r} names no volume of the pod")
        host = base / mount["subPath"] if mount.get("subPath") else base
        mounts.append(Mount(container_path=mount["mountPath"].rstrip("/") or "/", host_path=host))
    return sorted(mounts, key=lambda m: len(m.container_path), reverse=True)


def rewrite_paths(text: str, mounts: Sequence[Mount]) -> str:
    """Rewrite container paths that start a path in `text` (a whole arg, or after '=' / ':').

    One pass, longest mount path first: a rewritten path is never rewritten again (a pod folder under
    /tmp must not be taken for the container's /tmp mount)."""
    targets = {m.container_path: str(m.host_path) for m in mounts if m.container_path != "/"}
    if not targets:
        return text
    alternatives = "|".join(re.escape(path) for path in sorted(targets, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[^\w.-])")
    return pattern.sub(lambda match: targets[match.group(1)], text)


def translate_command(words: Sequence[str], interpreter: str) -> list[str]:
    """The image's `python3` is this machine's interpreter."""
    argv = list(words)
    if argv and _PYTHON_NAME.match(os.path.basename(argv[0])):
        argv[0] = interpreter
    return argv


def field_values(pod: Mapping[str, Any], pod_ip: str, host_ip: str, node_name: str) -> dict[str, str]:
    """What `valueFrom.fieldRef` can name (the downward API's pod fields)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    values = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace") or "default",
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    for key, value in (metadata.get("labels") or {}).items():
        values[f"metadata.labels['{key}']"] = str(value)
    for key, value in (metadata.get("annotations") or {}).items():
        values[f"metadata.annotations['{key}']"] = str(value)
    return values


_REFERENCE = re.compile(r"\$\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_references(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from variables defined before; $$(VAR) is a literal $(VAR)."""

    def expand(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return f"$({escaped})"
        return env.get(name, match.group(0))

    return _REFERENCE.sub(expand, value)


def container_env(
    container: Mapping[str, Any], fields: Mapping[str, str], mounts: Sequence[Mount]
) -> dict[str, str]:
    """The container's own env entries, resolved in order (later entries may refer to earlier ones)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry and entry["value"] is not None:
            env[name] = rewrite_paths(expand_references(str(entry["value"]), env), mounts)
        elif (entry.get("valueFrom") or {}).get("fieldRef"):
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise UnsupportedContainer(f"env {name}: fieldRef {path!r} is not supported by the sandbox")
            env[name] = fields[path]
        elif entry.get("valueFrom"):
            source = next(iter(entry["valueFrom"]))
            raise UnsupportedContainer(f"env {name}: valueFrom.{source} is not supported by the sandbox")
        else:
            env[name] = ""
    return env


def inherited_env(host_env: Mapping[str, str]) -> dict[str, str]:
    """The runner's environment minus what belongs to the host only (the image's env stand-in)."""
    return {key: value for key, value in host_env.items() if key not in _HOST_ONLY_ENV}


def build_process_spec(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_ip: str,
    host_ip: str,
    node_name: str,
    node_root: Path,
    pod_dir: Path,
    interpreter: str,
    host_env: Mapping[str, str],
    entrypoints: Mapping[str, Sequence[str]] | None = None,
) -> ProcessSpec:
    """Everything needed to start `container` of `pod` as a local process."""
    command = list(container.get("command") or [])
    if not command:
        command = entrypoint_of(str(container.get("image") or ""), entrypoints or {}) or []
    if not command:
        raise UnsupportedContainer(
            f"the sandbox knows no entrypoint of image {container.get('image')!r} (a project image from"
            " docker/ or a container command): set command"
        )
    volumes = volume_directories(pod, node_root, pod_dir)
    mounts = container_mounts(container, volumes)
    own_env = container_env(container, field_values(pod, pod_ip, host_ip, node_name), mounts)
    words = [expand_references(word, own_env) for word in command + list(container.get("args") or [])]
    argv = translate_command([rewrite_paths(word, mounts) for word in words], interpreter)
    env = inherited_env(host_env)
    env.update(own_env)
    env["HOSTNAME"] = (pod.get("metadata") or {}).get("name", "")
    # Pods share this machine: each runtime binds its servers (a worker its sshd) to its own loopback address.
    env["BLOOMZ_BIND_HOST"] = pod_ip
    working_dir = container.get("workingDir")
    # A working directory inside the image means nothing here: only a mounted one is kept.
    local_dir = rewrite_paths(working_dir, mounts) if working_dir else working_dir
    cwd = Path(local_dir) if local_dir and local_dir != working_dir else pod_dir
    # Directories to create: never a path that must already exist as a file (hostPath type File/Socket).
    must_exist = {
        local for _volume, local, kind in host_path_requirements(pod, node_root) if kind != "Directory"
    }
    directories = {m.host_path for m in mounts if m.host_path not in must_exist} | {cwd}
    return ProcessSpec(argv=argv, env=env, cwd=cwd, directories=sorted(directories))
