"""The container images: hadolint-clean Dockerfiles whose entry points, ports and pinned versions agree with
the operator, the runtime and the CI environment; the build script and the base-image constraint step."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from bloomz_operator.builders import build_pod_spec
from bloomz_operator.constants import GRPC_PORT, HTTP_PORT, METRICS_PORT
from bloomz_operator.settings import DEFAULT_IMAGES, GAUDI_BASE_IMAGE, Settings
from bloomz_operator.spec import parse_spec
from conftest import CHART, REPO, find_tool, pyproject, run
from dockerfiles import Dockerfile, parse
from packaging.requirements import Requirement

DOCKER = REPO / "docker"
RUNTIME_IMAGES = {"hpu": "runtime-gaudi", "cuda": "runtime-cuda", "cpu": "runtime-cpu"}
ALL_IMAGES = ["operator", *RUNTIME_IMAGES.values()]


def dockerfile(image: str) -> Dockerfile:
    return parse(DOCKER / f"{image}.Dockerfile")


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_hadolint_passes(image: str) -> None:
    result = run([find_tool("hadolint"), "--no-color", str(DOCKER / f"{image}.Dockerfile")], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("device", sorted(RUNTIME_IMAGES))
def test_runtime_image_entrypoint_is_the_command_the_operator_gives_its_pods(device: str) -> None:
    pod = build_pod_spec(
        parse_spec({"model": "bigscience/bloomz-7b1", "device": device, "cards": 2}), Settings()
    )
    (container,) = pod["containers"]
    image = dockerfile(RUNTIME_IMAGES[device])
    assert image.entrypoint() == container["command"]
    # The pod's default image is the one this Dockerfile builds.
    assert container["image"].rsplit(":", 1)[0].endswith(f"/{RUNTIME_IMAGES[device]}")
    # The gRPC, HTTP and metrics ports the pod declares are the ones the image exposes.
    declared = {p["containerPort"] for p in container["ports"]}
    assert image.exposed_ports() == declared == {GRPC_PORT, HTTP_PORT, METRICS_PORT}


def test_operator_image_entrypoint_user_and_port() -> None:
    image = dockerfile("operator")
    assert image.entrypoint() == ["python3", "-m", "bloomz_operator"]
    assert image.exposed_ports() == {Settings().liveness_port}
    # A numeric non-root user, the one the chart's pod security context runs as.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = image.final.last("USER").split(":")[0]
    assert user == str(values["podSecurityContext"]["runAsUser"]) != "0"
    # The operator image carries no torch: it installs only the operator extra.
    installs = " ".join(line for stage in image.stages for line in stage.all("RUN") if "pip install" in line)
    assert '".[operator]"' in installs and "torch" not in installs


def test_cpu_image_runs_as_non_root_with_the_ci_versions() -> None:
    image = dockerfile("runtime-cpu")
    assert image.final.last("USER").split(":")[0] not in ("0", "root")
    pins = constraint_pins()
    assert image.arg("TORCH_VERSION") == pins["torch"]
    installs = " ".join(image.stages[0].all("RUN"))
    assert "--constraint constraints-cpu.txt" in installs and '".[cpu]"' in installs
    # The baked tiny model lives where a spec without storage finds it.
    assert "bloomz_runtime.tiny --out /models/bloomz-tiny" in installs


def test_cuda_image_deepspeed_is_the_ci_version() -> None:
    assert dockerfile("runtime-cuda").arg("DEEPSPEED_VERSION") == constraint_pins()["deepspeed"]


def test_gaudi_image_versions_move_together() -> None:
    image = dockerfile("runtime-gaudi")
    synapse, torch = image.arg("SYNAPSE_VERSION"), image.arg("GAUDI_TORCH_VERSION")
    assert image.stages[0].base == "${GAUDI_BASE_IMAGE}"
    assert image.arg("GAUDI_BASE_IMAGE") == (
        f"vault.habana.ai/gaudi-docker/{synapse}/ubuntu22.04/habanalabs/pytorch-installer-{torch}"
        f":{synapse}-{image.arg('SYNAPSE_BUILD')}"
    )
    assert re.fullmatch(r"\d+", image.arg("SYNAPSE_BUILD"))  # Intel's release build, never :latest
    # optimum-habana's pin is inside the range the package's gaudi extra allows.
    extras = pyproject()["project"]["optional-dependencies"]
    (optimum,) = [Requirement(r) for r in extras["gaudi"] if r.startswith("optimum-habana")]
    assert optimum.specifier.contains(image.arg("OPTIMUM_HABANA_VERSION"))
    # DeepSpeed is Habana's fork at a release tag, never PyPI's deepspeed.
    assert re.fullmatch(r"\d+\.\d+\.\d+", image.arg("DEEPSPEED_FORK_TAG"))
    installs = " ".join(image.final.all("RUN"))
    # ... installed from the commit the tag points at (a tag can move); the build refuses to run without it.
    assert "git+https://github.com/HabanaAI/DeepSpeed.git@${DEEPSPEED_FORK_COMMIT}" in installs
    assert "expr \"${DEEPSPEED_FORK_COMMIT}\" : '[0-9a-f]\\{40\\}$'" in installs
    assert not any(r.startswith("deepspeed") for r in extras["gaudi"])
    # Every pip install runs under the constraints that keep the base image's torch and habana packages.
    assert installs.count("pip install --constraint /opt/bloomz/base-constraints.txt") == installs.count(
        "pip install"
    )


def _dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any of its parents."""
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        pattern = pattern.replace("**/", "*")
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_copied_sources_exist_and_are_in_the_build_context(image: str) -> None:
    for stage in dockerfile(image).stages:
        for line in stage.all("COPY"):
            if line.startswith("--from="):
                continue
            for source in line.split()[:-1]:
                assert (REPO / source).exists(), f"{image}: COPY {source} does not exist"
                assert _dockerignore_allows(source.rstrip("/")), f"{image}: .dockerignore drops {source}"
    assert not _dockerignore_allows(".venv") and not _dockerignore_allows("tests")


def copy_build_context(destination: Path) -> Path:
    """The files `docker build .` sends: the repository filtered by .dockerignore."""
    for top in sorted(REPO.iterdir()):
        if not _dockerignore_allows(top.name):
            continue
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            relative = path.relative_to(REPO).as_posix()
            if _dockerignore_allows(relative):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return destination


def copied_sources(image: str) -> list[str]:
    """The build-context paths an image's Dockerfile COPYs (not from other stages)."""
    sources = []
    for stage in dockerfile(image).stages:
        for line in stage.all("COPY"):
            if not line.startswith("--from="):
                sources += [source.rstrip("/") for source in line.split()[:-1]]
    return sources


# What each image's wheel must hold and must not: the operator image carries no runtime (no torch code,
# benchmarks or checkpoint builder) and no image carries the sandbox, a development tool.
IMAGE_PACKAGES = {
    "operator": ({"bloomz_operator", "bloomz_api"}, {"bloomz_runtime", "bloomz_sandbox"}),
    "runtime-cpu": ({"bloomz_runtime", "bloomz_api"}, {"bloomz_sandbox", "bloomz_operator"}),
    "runtime-cuda": ({"bloomz_runtime", "bloomz_api"}, {"bloomz_sandbox", "bloomz_operator"}),
    "runtime-gaudi": ({"bloomz_runtime", "bloomz_api"}, {"bloomz_sandbox", "bloomz_operator"}),
}


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_each_image_installs_only_the_packages_it_needs(image: str, tmp_path: Path) -> None:
    """What an image's `pip install .[extra]` step builds, offline: our wheel from the sources that image
    COPYs out of the build context, and nothing else."""
    context = copy_build_context(tmp_path / "context")
    image_src = tmp_path / "image"
    image_src.mkdir()
    for source in copied_sources(image):
        if source in ("docker", "docker/base-constraints.sh"):
            continue
        target = image_src / source
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (context / source).is_dir() else shutil.copy2
        copy(context / source, target)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            ".",
        ],
        cwd=image_src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("bloomz_operator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist() if "dist-info" not in name}
    wanted, unwanted = IMAGE_PACKAGES[image]
    assert wanted <= packages and not (unwanted & packages), packages
    if image == "operator":
        assert "bloomz_api/proto/generate_pb2.py" in archive.namelist()


# Every module the operator image runs, imported where the runtime and the sandbox cannot be found: what the
# image's wheel holds is not enough, its imports must stay inside it too.
_WITHOUT_RUNTIME = """
import importlib, pkgutil, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bloomz_runtime", "bloomz_sandbox", "torch"):
            raise ModuleNotFoundError(f"{name} is not in the operator image")
sys.meta_path.insert(0, Absent())
import bloomz_operator
names = [m.name for m in pkgutil.walk_packages(bloomz_operator.__path__, "bloomz_operator.")]
for name in ["bloomz_api.client", "bloomz_api.options", *names]:
    importlib.import_module(name)
print(len(names))
"""


def test_the_operator_imports_nothing_of_the_runtime_or_the_sandbox() -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_RUNTIME], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) > 10


def test_build_context_resolves_the_image_extras(tmp_path: Path) -> None:
    """The extras the operator and CPU images install resolve offline under constraints-cpu.txt, and the
    build context never carries the sandbox."""
    context = copy_build_context(tmp_path / "context")
    assert not (context / "sandbox").exists() and (context / "api").is_dir()
    for extra in ("operator", "cpu"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-index",
                "--no-build-isolation",
                "--constraint",
                "constraints-cpu.txt",
                f".[{extra}]",
            ],
            cwd=context,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def images_list(**env: str) -> dict[str, tuple[str, str]]:
    """`scripts/images.sh list` -> {image: (Dockerfile path, reference)}."""
    result = subprocess.run(
        ["bash", "scripts/images.sh", "list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    out = {}
    for line in result.stdout.splitlines():
        name, path, reference = line.split()
        out[name] = (path, reference)
    return out


def test_image_tags_come_from_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    images = images_list()
    assert sorted(images) == sorted(ALL_IMAGES)
    synapse = dockerfile("runtime-gaudi").arg("SYNAPSE_VERSION")
    for name, (path, reference) in images.items():
        assert (REPO / path).is_file()
        tag = f"{version}-synapse{synapse}" if name == "runtime-gaudi" else version
        assert reference == f"ghcr.io/bloomz-operator/{name}:{tag}"
    overridden = images_list(REGISTRY="registry.example.com/ml", VERSION="9.9.9")
    assert overridden["runtime-cpu"][1] == "registry.example.com/ml/runtime-cpu:9.9.9"


def test_operator_default_runtime_images_are_the_ones_the_build_script_tags() -> None:
    images = images_list()
    for device, image in RUNTIME_IMAGES.items():
        assert DEFAULT_IMAGES[device] == images[image][1], (
            f"bloomz_operator.settings.DEFAULT_IMAGES[{device!r}] is not what `make images` builds"
        )
    # The Gaudi base the operator's settings name is the one the Gaudi image is built on.
    gaudi_base = dockerfile("runtime-gaudi").arg("GAUDI_BASE_IMAGE").rsplit(":", 1)[0]
    assert gaudi_base == GAUDI_BASE_IMAGE


def test_build_and_push_run_the_engine_with_the_version_tags(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    engine = tmp_path / "fake-engine"
    engine.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    engine.chmod(0o755)
    env = {**os.environ, "ENGINE": str(engine), "VERSION": "1.2.3"}
    for action in ("build", "push"):
        subprocess.run(
            ["bash", "scripts/images.sh", action, "runtime-cpu", "operator"], cwd=REPO, env=env, check=True
        )
    registry = "ghcr.io/bloomz-operator"
    assert log.read_text().splitlines() == [
        f"build -f docker/runtime-cpu.Dockerfile --build-arg VERSION=1.2.3 -t {registry}/runtime-cpu:1.2.3 .",
        f"build -f docker/operator.Dockerfile --build-arg VERSION=1.2.3 -t {registry}/operator:1.2.3 .",
        f"push {registry}/runtime-cpu:1.2.3",
        f"push {registry}/operator:1.2.3",
    ]


def test_base_constraints_pin_the_installed_torch_so_pip_cannot_replace_it(tmp_path: Path) -> None:
    import torch

    constraints = tmp_path / "base-constraints.txt"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["sh", str(DOCKER / "base-constraints.sh"), str(constraints)], env=env, check=True)
    pins = dict(line.split("==") for line in constraints.read_text().splitlines())
    assert pins["torch"] == torch.__version__
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--no-deps",
        "--constraint",
        str(constraints),
    ]
    # What our extras declare (torch>=2.1, unpinned) keeps the installed torch ...
    kept = subprocess.run([*pip, "torch>=2.1"], capture_output=True, text=True, env=env)
    assert kept.returncode == 0, kept.stderr
    assert "Would install" not in kept.stdout
    # ... and a requirement that would replace it fails instead of silently swapping the base image's build.
    other = subprocess.run([*pip, "torch<2.1"], capture_output=True, text=True, env=env)
    assert other.returncode != 0


def test_base_constraints_fail_when_nothing_matches(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(DOCKER / "base-constraints.sh"), str(tmp_path / "c.txt"), "no-such-package-here"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode != 0
    assert "no installed package matches" in result.stderr


def test_cluster_guide_names_the_versions_the_images_are_built_with() -> None:
    guide = (REPO / "docs" / "cluster.md").read_text()
    gaudi, cuda, cpu = dockerfile("runtime-gaudi"), dockerfile("runtime-cuda"), dockerfile("runtime-cpu")
    base = gaudi.arg("GAUDI_BASE_IMAGE").rsplit(":", 1)[0]
    for fact in (
        base,
        f"synapse{gaudi.arg('SYNAPSE_VERSION')}",
        f"optimum-habana `{gaudi.arg('OPTIMUM_HABANA_VERSION')}`",
        f"DeepSpeed fork `{gaudi.arg('DEEPSPEED_FORK_TAG')}`",
        cuda.arg("NGC_IMAGE"),
        f"CPU torch `{cpu.arg('TORCH_VERSION')}`",
    ):
        assert fact in guide, f"docs/cluster.md does not mention {fact!r}"


def test_no_base_image_floats_on_latest() -> None:
    for image in ("operator", "runtime-cpu", "runtime-cuda", "runtime-gaudi"):
        text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
        assert ":latest" not in text, image


def test_device_images_pin_the_runtimes_python_packages() -> None:
    pins = {}
    for line in (REPO / "docker" / "constraints-runtime.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    # Every direct dependency of the runtime extra except torch (the base image's) has an exact pin.
    extras = pyproject()["project"]["optional-dependencies"]
    wanted = {Requirement(r).name.lower() for r in extras["runtime"]} - {"torch"}
    assert wanted <= set(pins)
    cpu = constraint_pins()
    for name in ("transformers", "accelerate", "grpcio", "grpcio-reflection", "prometheus-client"):
        assert pins[name] == cpu[name], name
    for image in ("runtime-gaudi", "runtime-cuda"):
        text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
        assert "--constraint constraints-runtime.txt" in text and "docker/constraints-runtime.txt" in text
