"""The sandbox main job's progress lines."""

from bloomz_sandbox.progress import changes, pod_line, ready_with_latency, resource_line


def resource(conditions, latency=None, generation=1, observed=1):
    status = {"phase": "Loading", "conditions": conditions, "replicas": 1, "readyReplicas": 0}
    status["observedGeneration"] = observed
    if latency is not None:
        status["latency"] = latency
    return {"metadata": {"name": "bloomz-tiny", "generation": generation}, "status": status}


def test_resource_line_shows_phase_conditions_with_reasons_and_latency():
    loading = resource(
        [
            {"type": "Scheduled", "status": "True", "reason": "Scheduled"},
            {"type": "ModelLoaded", "status": "False", "reason": "Loading", "message": "starting"},
        ]
    )
    assert resource_line(loading) == (
        "bloomz-tiny: phase Loading, Scheduled=True, ModelLoaded=False (Loading: starting), "
        "ready replicas 0/1, latency not measured yet"
    )
    measured = resource([], latency={"seconds": 0.1234, "maxNewTokens": 16, "tokensPerSecond": 129.6})
    assert resource_line(measured).endswith("latency 0.123 s for 16 tokens (129.6 tokens/s)")


def test_pod_line_shows_waiting_reasons_and_scheduling_failures():
    pod = {
        "metadata": {"name": "p-0"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/1 nodes are available"}],
        },
    }
    assert pod_line(pod) == "pod p-0: Pending, unschedulable: 0/1 nodes are available"
    running = {
        "metadata": {"name": "p-0"},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.2",
            "containerStatuses": [
                {"name": "runtime", "ready": False, "restartCount": 2, "state": {"waiting": {"reason": "X"}}}
            ],
        },
    }
    assert pod_line(running) == "pod p-0: Running, ready 0/1, restarts 2, IP 127.0.0.2, runtime waiting (X)"


def test_only_changed_lines_are_printed_again():
    assert changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == ["3", "4"]
    assert changes({"a": "1"}, {}) == ["a: gone"]


def test_ready_needs_latency_and_a_status_for_the_current_generation():
    ready = [{"type": "Ready", "status": "True"}]
    assert ready_with_latency(resource(ready, latency={"seconds": 0.5}))
    assert not ready_with_latency(resource(ready))
    assert not ready_with_latency(resource([{"type": "Ready", "status": "False"}], latency={"seconds": 0.5}))
    assert not ready_with_latency(resource(ready, latency={"seconds": 0.5}, generation=2, observed=1))
