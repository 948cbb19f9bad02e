"""Pod status computed from the sandbox's view of a pod's processes."""

from bloomz_sandbox.node.pod_status import (
    WAITING_BACKOFF,
    ContainerView,
    PodView,
    Termination,
    backoff_seconds,
    pod_status,
    rfc3339,
    should_restart,
    termination_exit_code,
    with_transition_times,
)

T0 = 1_800_000_000.0


def running(ready=False, restarts=0, last=None):
    return ContainerView(
        name="runtime",
        image="img",
        state="running",
        started_at=T0,
        process_id=42,
        ready=ready,
        restart_count=restarts,
        last_termination=last,
    )


def view(*containers, scheduled=True, message=""):
    return PodView(
        scheduled=scheduled,
        unschedulable_message=message,
        pod_ip="127.0.0.9" if scheduled else "",
        host_ip="127.0.0.1" if scheduled else "",
        start_time=T0 if scheduled else None,
        containers=containers,
    )


def conditions(status):
    return {c["type"]: (c["status"], c.get("reason"), c.get("message")) for c in status["conditions"]}


def test_unschedulable_pod_is_pending_with_the_scheduler_message():
    message = "0/1 nodes are available: 1 Insufficient habana.ai/gaudi."
    status = pod_status(view(scheduled=False, message=message), None, T0)
    assert status["phase"] == "Pending"
    assert conditions(status) == {"PodScheduled": ("False", "Unschedulable", message)}
    assert status["podIP"] is None and status["containerStatuses"] is None


def test_scheduled_pod_waiting_for_a_simulated_device_is_pending_with_the_reason():
    waiting = ContainerView(
        name="runtime", image="img", state="waiting", reason="ContainerCreating", message="m"
    )
    status = pod_status(view(waiting), None, T0)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "ContainerCreating", "message": "m"}
    }
    assert conditions(status)["PodScheduled"] == ("True", None, None)
    assert conditions(status)["Ready"] == (
        "False",
        "ContainersNotReady",
        "containers with unready status: [runtime]",
    )


def test_running_then_ready():
    status = pod_status(view(running()), None, T0)
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.0.0.9" and status["podIPs"] == [{"ip": "127.0.0.9"}]
    assert status["startTime"] == rfc3339(T0)
    container = status["containerStatuses"][0]
    assert container["state"] == {"running": {"startedAt": rfc3339(T0)}}
    assert container["started"] is True and container["ready"] is False
    assert container["containerID"] == "sandbox://42"
    ready = pod_status(view(running(ready=True)), status, T0 + 5)
    assert conditions(ready)["Ready"] == ("True", None, None)
    assert conditions(ready)["ContainersReady"] == ("True", None, None)


def test_transition_time_changes_only_with_the_status():
    first = with_transition_times([{"type": "Ready", "status": "False"}], [], T0)
    same = with_transition_times([{"type": "Ready", "status": "False"}], first, T0 + 10)
    flipped = with_transition_times([{"type": "Ready", "status": "True"}], same, T0 + 20)
    assert same[0]["lastTransitionTime"] == rfc3339(T0)
    assert flipped[0]["lastTransitionTime"] == rfc3339(T0 + 20)


def test_crash_loop_keeps_the_pod_running_with_the_last_exit():
    last = Termination(exit_code=137, started_at=T0, finished_at=T0 + 3, signal=9)
    backing_off = ContainerView(
        name="runtime",
        image="img",
        state="waiting",
        reason=WAITING_BACKOFF,
        message="back-off",
        restart_count=1,
        last_termination=last,
    )
    status = pod_status(view(backing_off), None, T0 + 4)
    assert status["phase"] == "Running"
    container = status["containerStatuses"][0]
    assert container["restartCount"] == 1
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 137
    assert container["lastState"]["terminated"]["reason"] == "Error"
    assert container["lastState"]["terminated"]["signal"] == 9
    restarted = pod_status(view(running(restarts=1, last=last)), status, T0 + 6)
    assert restarted["containerStatuses"][0]["restartCount"] == 1
    assert restarted["phase"] == "Running"


def test_final_exits_give_succeeded_or_failed():
    ok = Termination(exit_code=0, started_at=T0, finished_at=T0 + 1)
    bad = Termination(exit_code=3, started_at=T0, finished_at=T0 + 1)

    def done(termination):
        return ContainerView(name="c", image="i", state="terminated", terminated=termination)

    succeeded = pod_status(view(done(ok)), None, T0)
    assert succeeded["phase"] == "Succeeded"
    assert succeeded["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert conditions(succeeded)["Ready"] == ("False", "PodCompleted", None)
    failed = pod_status(view(done(bad)), None, T0)
    assert failed["phase"] == "Failed"
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_exit_codes_of_signals_look_like_kubernetes():
    assert termination_exit_code(-9) == (137, 9)
    assert termination_exit_code(-15) == (143, 15)
    assert termination_exit_code(1) == (1, None)


def test_restart_policy_and_backoff():
    assert should_restart("Always", 0) and should_restart("", 0)
    assert should_restart("OnFailure", 1) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)
    assert [backoff_seconds(n, 0.5, 3.0) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 3.0]
