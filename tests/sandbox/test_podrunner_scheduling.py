"""The sandbox scheduler's pure fit logic (one simulated node)."""

from decimal import Decimal

from bloomz_sandbox.node.scheduling import (
    parse_amounts,
    pod_requests,
    qos_class,
    requested_accelerators,
    scheduler_message,
    sum_requests,
    unschedulable_reasons,
)

NODE = parse_amounts({"cpu": "16", "memory": "64Gi", "habana.ai/gaudi": 8, "nvidia.com/gpu": 0, "pods": 110})


def pod(limits=None, requests=None, node_selector=None, init_limits=None):
    spec: dict = {"containers": [{"name": "runtime", "resources": {}}]}
    if limits is not None:
        spec["containers"][0]["resources"]["limits"] = limits
    if requests is not None:
        spec["containers"][0]["resources"]["requests"] = requests
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if init_limits is not None:
        spec["initContainers"] = [{"name": "init", "resources": {"limits": init_limits}}]
    return {"metadata": {"name": "p"}, "spec": spec}


def test_quantities_are_parsed_exactly():
    assert parse_amounts({"cpu": "500m", "memory": "1Gi", "habana.ai/gaudi": 8}) == {
        "cpu": Decimal("0.5"),
        "memory": Decimal(2**30),
        "habana.ai/gaudi": Decimal(8),
    }


def test_limits_count_as_requests_when_no_request_is_given():
    requests = pod_requests(pod(limits={"habana.ai/gaudi": 8, "cpu": "4"}, requests={"cpu": "2"}))
    assert requests == {"habana.ai/gaudi": Decimal(8), "cpu": Decimal(2)}


def test_init_containers_count_by_their_maximum():
    requests = pod_requests(pod(requests={"cpu": "1"}, init_limits={"cpu": "3", "memory": "1Gi"}))
    assert requests == {"cpu": Decimal(3), "memory": Decimal(2**30)}


def test_a_pod_that_fits_has_no_reasons():
    assert unschedulable_reasons(pod(limits={"habana.ai/gaudi": 8}), NODE, {}, {}) == []


def test_too_many_cards_is_insufficient_gaudi_with_the_scheduler_message():
    reasons = unschedulable_reasons(pod(limits={"habana.ai/gaudi": 16}), NODE, {}, {})
    assert reasons == ["Insufficient habana.ai/gaudi"]
    assert scheduler_message(reasons) == "0/1 nodes are available: 1 Insufficient habana.ai/gaudi."


def test_cards_already_bound_to_other_pods_are_not_free():
    used = sum_requests([pod(limits={"habana.ai/gaudi": 6})])
    assert unschedulable_reasons(pod(limits={"habana.ai/gaudi": 2}), NODE, used, {}) == []
    assert unschedulable_reasons(pod(limits={"habana.ai/gaudi": 4}), NODE, used, {}) == [
        "Insufficient habana.ai/gaudi"
    ]


def test_several_shortages_are_listed_sorted():
    reasons = unschedulable_reasons(
        pod(limits={"nvidia.com/gpu": 1, "cpu": "64", "memory": "1Ti"}), NODE, {}, {}
    )
    assert reasons == ["Insufficient cpu", "Insufficient memory", "Insufficient nvidia.com/gpu"]
    assert scheduler_message(reasons) == (
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 Insufficient nvidia.com/gpu."
    )


def test_a_resource_the_node_does_not_advertise_never_fits():
    assert unschedulable_reasons(pod(limits={"example.com/fpga": 1}), NODE, {}, {}) == [
        "Insufficient example.com/fpga"
    ]


def test_node_selector_must_match_the_node_labels():
    labels = {"kubernetes.io/hostname": "sandbox-node", "accelerator": "gaudi2"}
    assert unschedulable_reasons(pod(node_selector={"accelerator": "gaudi2"}), NODE, {}, labels) == []
    reasons = unschedulable_reasons(pod(node_selector={"accelerator": "a100"}), NODE, {}, labels)
    assert scheduler_message(reasons) == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )


def test_pod_count_is_limited():
    node = {**NODE, "pods": Decimal(2)}
    assert unschedulable_reasons(pod(), node, {}, {}, bound_pod_count=1) == []
    assert unschedulable_reasons(pod(), node, {}, {}, bound_pod_count=2) == ["Too many pods"]


def test_accelerator_requests_are_recognised():
    assert requested_accelerators(pod(limits={"habana.ai/gaudi": 8})) == ["habana.ai/gaudi"]
    assert requested_accelerators(pod(limits={"nvidia.com/gpu": 1, "cpu": 2})) == ["nvidia.com/gpu"]
    assert requested_accelerators(pod(requests={"cpu": 2, "memory": "1Gi"})) == []


def test_qos_class_follows_requests_and_limits():
    assert qos_class(pod()) == "BestEffort"
    assert qos_class(pod(limits={"habana.ai/gaudi": 8})) == "BestEffort"
    assert qos_class(pod(limits={"cpu": "2", "memory": "1Gi"})) == "Guaranteed"
    assert qos_class(pod(limits={"cpu": "2", "memory": "1Gi"}, requests={"cpu": "2000m"})) == "Guaranteed"
    assert qos_class(pod(limits={"memory": "4Gi"}, requests={"cpu": "2", "memory": "2Gi"})) == "Burstable"
