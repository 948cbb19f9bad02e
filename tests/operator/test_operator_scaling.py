"""Scale subresource rules: the selector string, and which spec changes keep the measured latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from bloomz_operator.builders import Owner, build_service, selector_labels
from bloomz_operator.groups import current_template_hash
from bloomz_operator.scaling import keeps_latency, selector_string
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = Settings()


def spec(name: str = "bloomz-cpu.yaml", **changes: Any) -> dict[str, Any]:
    body = dict(yaml.safe_load((EXAMPLES / name).read_text())["spec"])
    body.update(changes)
    return body


def measured_on(raw: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": 0.5, "templateHash": current_template_hash(parse_spec(raw), SETTINGS)}


def test_selector_string_is_sorted_and_selects_what_the_service_selects() -> None:
    assert selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
    owner = Owner(name="x", namespace="ns", uid="u")
    assert selector_string(build_service(owner)["spec"]["selector"]) == selector_string(selector_labels("x"))
    leaders = selector_string(build_service(owner, leaders_only=True)["spec"]["selector"])
    assert leaders.endswith("inference.bloomz.dev/role=leader")  # one pod per multi-node replica


def test_scaling_keeps_the_latency_of_unchanged_pods() -> None:
    for name in ("bloomz-cpu.yaml", "bloomz.yaml"):
        old = spec(name)
        latency = measured_on(old)
        for replicas in (0, 2, 5):
            new = spec(name, replicas=replicas)
            assert keeps_latency(latency, parse_spec(old), parse_spec(new), SETTINGS)


def test_multi_node_scaling_keeps_the_latency_too() -> None:
    old = spec(cards=4, cardsPerNode=2)
    new = spec(cards=4, cardsPerNode=2, replicas=3)
    assert keeps_latency(measured_on(old), parse_spec(old), parse_spec(new), SETTINGS)


def test_template_or_benchmark_changes_drop_it() -> None:
    old = spec()
    latency = measured_on(old)
    changed_template = spec(generation={**old["generation"], "maxNewTokens": 32})
    assert not keeps_latency(latency, parse_spec(old), parse_spec(changed_template), SETTINGS)
    changed_bench = spec(benchmark={**old["benchmark"], "maxNewTokens": 8})
    assert not keeps_latency(latency, parse_spec(old), parse_spec(changed_bench), SETTINGS)
    # When to measure is not what is measured.
    later = spec(benchmark={**old["benchmark"], "intervalSeconds": 60})
    assert keeps_latency(latency, parse_spec(old), parse_spec(later), SETTINGS)
    assert not keeps_latency(None, parse_spec(old), parse_spec(old), SETTINGS)
    stale = {**latency, "templateHash": "other"}
    assert not keeps_latency(stale, parse_spec(old), parse_spec(spec(replicas=2)), SETTINGS)
