"""Which pods a latency measurement asks, and the event it posts."""

from __future__ import annotations

from typing import Any

from bloomz_operator.builders import Owner
from bloomz_operator.groups import build_replicas
from bloomz_operator.latency import (
    PodMeasurement,
    PodTarget,
    benchmark_targets,
    measured_message,
    pod_address,
)
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import name, observed

OWNER = Owner(name="l", namespace="ns", uid="u")


def with_ip(pod: dict[str, Any], ip: str | None, **state: Any) -> dict[str, Any]:
    seen = observed(pod, **state)
    if ip is not None:
        seen["status"]["podIP"] = ip
    return seen


def replicas_of(raw: dict[str, Any], count: int) -> list[list[dict[str, Any]]]:
    return build_replicas(OWNER, parse_spec({**raw, "replicas": count}), Settings())


def test_addresses_bracket_ipv6() -> None:
    assert pod_address("10.0.0.1", 50051) == "10.0.0.1:50051"
    assert pod_address("fd00::1", 50051) == "[fd00::1]:50051"


def test_only_serving_pods_of_the_current_template_with_an_address_by_name() -> None:
    new = [r[0] for r in replicas_of({"model": "m/new", "cards": 8}, 6)]
    (old,) = replicas_of({"model": "m/old", "cards": 8}, 1)
    hash_ = new[0]["metadata"]["labels"]["inference.bloomz.dev/template-hash"]
    seen = [
        with_ip(new[3], "10.0.0.3"),
        with_ip(new[0], "10.0.0.0"),
        with_ip(new[1], "10.0.0.1", ready=False),
        with_ip(new[2], "10.0.0.2", terminating=True),
        with_ip(new[4], None),
        with_ip(new[5], "fd00::5"),
        with_ip(old[0], "10.0.0.9"),
    ]
    assert benchmark_targets(seen, hash_, 7) == [
        PodTarget(name(new[0]), "10.0.0.0:7"),
        PodTarget(name(new[3]), "10.0.0.3:7"),
        PodTarget(name(new[5]), "[fd00::5]:7"),
    ]
    assert benchmark_targets(seen, "other", 7) == []


def test_a_group_is_measured_on_its_leader_only() -> None:
    groups = replicas_of({"model": "m", "cards": 16, "cardsPerNode": 8}, 2)
    hash_ = groups[0][0]["metadata"]["labels"]["inference.bloomz.dev/template-hash"]
    seen = [with_ip(pod, f"10.0.{i}.{m}") for i, group in enumerate(groups) for m, pod in enumerate(group)]
    targets = benchmark_targets(seen, hash_, 50051)
    assert targets == [PodTarget(name(g[0]), f"10.0.{i}.0:50051") for i, g in enumerate(groups)]


def test_the_event_counts_the_pods_that_answered() -> None:
    latency = {"maxNewTokens": 100, "seconds": 2.5, "tokensPerSecond": 40.0}
    measurements = [PodMeasurement("a", seconds=2.5), PodMeasurement("b", error="down"), PodMeasurement("c")]
    assert (
        measured_message(latency, measurements) == "100 tokens in 2.5 s (40.0 tokens/s, median over 2 pod(s))"
    )
    assert measured_message({"maxNewTokens": 100}, [PodMeasurement("b", error="down")]) is None
