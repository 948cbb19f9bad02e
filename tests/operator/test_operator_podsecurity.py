"""Least privilege for runtime pods: the Pod Security Standard each device's pods meet, and the checker."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bloomz_operator.builders import Owner, build_pod_spec
from bloomz_operator.groups import pod_template
from bloomz_operator.podsecurity import level_of, violations
from bloomz_operator.settings import Settings, parse_settings
from bloomz_operator.spec import parse_spec

# What docs/cluster.md promises for each device (Gaudi: Intel's recipe needs hostIPC and SYS_NICE).
LEVELS = {"cpu": "restricted", "cuda": "baseline", "hpu": "privileged"}


def spec_for(device: str, **extra: Any) -> Any:
    return parse_spec({"model": "bigscience/bloomz-7b1", "device": device, "cards": 2, **extra})


@pytest.mark.parametrize("device", sorted(LEVELS))
def test_each_device_meets_its_documented_level(device: str) -> None:
    pod_spec = build_pod_spec(spec_for(device), Settings())
    assert level_of(pod_spec) == LEVELS[device]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod_spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("device", sorted(LEVELS))
def test_multi_node_leaders_and_workers_meet_the_same_level(device: str) -> None:
    spec = spec_for(device, cards=4, cardsPerNode=2)
    template = pod_template(Owner("o", "ns", "u"), spec, Settings())
    for pod_spec in (template.leader, template.worker):
        assert level_of(pod_spec) == LEVELS[device]


def test_gaudi_is_privileged_only_for_what_intels_recipe_needs() -> None:
    pod_spec = build_pod_spec(spec_for("hpu"), Settings())
    assert sorted(violations(pod_spec, "baseline")) == [
        "host namespaces: hostIPC=true",
        "runtime: capabilities ['SYS_NICE'] added",
    ]
    assert pod_spec["containers"][0]["securityContext"]["capabilities"]["add"] == ["SYS_NICE"]
    # Both are settings: a cluster whose Gaudi nodes do without them gets baseline pods.
    relaxed = parse_settings({"devices": {"hpu": {"hostIPC": False, "capabilities": []}}})
    assert level_of(build_pod_spec(spec_for("hpu"), relaxed)) == "baseline"


def test_cpu_runs_as_the_images_fixed_uid() -> None:
    context = build_pod_spec(spec_for("cpu"), Settings())["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, 10001, 10001)
    # A CUDA image whose user is known can say so in the settings and reach restricted.
    known = parse_settings({"devices": {"cuda": {"runAsUser": 1000}}})
    assert level_of(build_pod_spec(spec_for("cuda"), known)) == "restricted"


def test_a_host_path_model_volume_is_read_only_and_not_baseline() -> None:
    spec = spec_for("cpu", storage={"hostPath": {"path": "/data/models"}})
    pod_spec = build_pod_spec(spec, Settings())
    (mount,) = [m for m in pod_spec["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True
    assert level_of(pod_spec) == "privileged"


RESTRICTED = build_pod_spec(spec_for("cpu"), Settings())


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = spec["securityContext"]
    return context


def ctx(spec: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = spec["containers"][0]["securityContext"]
    return context


@pytest.mark.parametrize(
    ("change", "level", "complaint"),
    [
        (lambda s: s.update(hostNetwork=True), "baseline", "hostNetwork"),
        (lambda s: s.update(hostPID=True), "baseline", "hostPID"),
        (lambda s: ctx(s).update(privileged=True), "baseline", "privileged"),
        (lambda s: s["containers"][0]["ports"][0].update(hostPort=8080), "baseline", "hostPort"),
        (lambda s: pod(s).update(seccompProfile={"type": "Unconfined"}), "baseline", "Unconfined"),
        (lambda s: pod(s).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "baseline", "sysctl"),
        (lambda s: ctx(s).update(procMount="Unmasked"), "baseline", "procMount"),
        (lambda s: pod(s).update(seLinuxOptions={"user": "root"}), "baseline", "seLinux"),
        (lambda s: ctx(s).update(allowPrivilegeEscalation=True), "restricted", "Escalation"),
        (lambda s: pod(s).update(runAsNonRoot=False), "restricted", "runAsNonRoot"),
        (lambda s: pod(s).update(runAsUser=0), "restricted", "runAsUser 0"),
        (lambda s: pod(s).pop("seccompProfile"), "restricted", "seccompProfile"),
        (lambda s: ctx(s)["capabilities"].update(drop=[]), "restricted", "drop ALL"),
        (lambda s: ctx(s)["capabilities"].update(add=["CHOWN"]), "restricted", "NET_BIND"),
        (lambda s: s["volumes"].append({"name": "x", "nfs": {"server": "a"}}), "restricted", "nfs"),
    ],
)  # fmt: skip
def test_the_checker_catches_each_rule(change: Any, level: str, complaint: str) -> None:
    assert violations(RESTRICTED, "restricted") == []
    pod_spec = copy.deepcopy(RESTRICTED)
    change(pod_spec)
    found = violations(pod_spec, level)
    assert any(complaint in v for v in found), found
    expected = {"baseline": "privileged", "restricted": "baseline"}[level]
    assert level_of(pod_spec) == expected


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Pod Security Standard level"):
        violations(RESTRICTED, "strict")
