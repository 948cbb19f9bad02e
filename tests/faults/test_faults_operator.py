"""Faults around the operator, in the sandbox (API emulator + the real operator + real runtime pods on
this machine): the API server answering 500 and then stalling, the operator killed with -9 in the middle
of a rollout, a serving pod deleted under load, and the sandbox itself SIGKILLed (nothing may survive).

One sandbox for the module (the CPU example, 2 ranks); the tests run in file order.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_operator.kubeapi import USER_AGENT
from bloomz_sandbox.stack import Sandbox, SandboxOptions
from fault_figures import FaultReport
from helpers import conditions
from helpers import wait_for as poll_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bloomz-cpu.yaml"
NAME = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
MODEL_ON_NODE = Path("node/var/lib/bloomz/models/bloomz-tiny")
WAIT_S = 420.0  # 2 shared cores, other suites running at the same time
ERRORS_S = 15.0  # the API answers the operator 500 for this long...
STALL_S = 30.0  # ...then holds each of its requests this long

wait_for = partial(poll_until, timeout=WAIT_S, interval=1.0)


def live_pods(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [p for p in sandbox.list_pods(instance=NAME) if not p["metadata"].get("deletionTimestamp")]


def max_new_tokens_of(pod: dict[str, Any]) -> str:
    args = [a for c in pod["spec"]["containers"] for a in (c.get("args") or []) + (c.get("command") or [])]
    return args[args.index("--max-new-tokens") + 1] if "--max-new-tokens" in args else ""


def serving_with(sandbox: Sandbox, max_new: str) -> dict[str, Any] | None:
    """The resource Ready, served by exactly one live pod, which runs with this --max-new-tokens."""
    resource = sandbox.get_resource(NAME) or {}
    pods = live_pods(sandbox)
    ready = conditions(resource).get("Ready", {}).get("status") == "True"
    if not ready or len(pods) != 1 or max_new_tokens_of(pods[0]) != max_new:
        return None
    statuses = pods[0].get("status", {}).get("containerStatuses") or []
    return pods[0] if statuses and all(s.get("ready") for s in statuses) else None


def edit_max_new_tokens(sandbox: Sandbox, value: int) -> None:
    patch = f'{{"spec":{{"generation":{{"maxNewTokens":{value}}}}}}}'
    sandbox.kubectl("patch", "bloomz", NAME, "--type=merge", "-p", patch)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("sandbox-faults")
    shutil.copytree(tiny_checkpoint, workdir / MODEL_ON_NODE)
    # The operator as a subprocess: these tests kill it and restart it, and read its log directly.
    stack = Sandbox(SandboxOptions(workdir=workdir, backoff_max_seconds=5.0, operator_from_chart=False))
    stack.start()
    try:
        stack.kubectl("apply", "--validate=false", "-f", str(EXAMPLE))
        wait_for("the example serving", lambda: serving_with(stack, "64"))
        yield stack
    finally:
        stack.stop()


def test_api_500s_then_a_stall_the_operator_keeps_going(sandbox: Sandbox, fault_report: FaultReport) -> None:
    row = fault_report.row(f"API server: 500 for {ERRORS_S:.0f} s, then stalls {STALL_S:.0f} s")
    assert sandbox.apiserver is not None
    faults = sandbox.apiserver.faults
    # Every call of the operator (its own client and Kopf's) fails; the pod runner and kubectl keep going.
    operator_agents = (USER_AGENT, "kopf/")
    try:
        errors = [faults.fail(500, "injected", user_agent=agent, watches=True) for agent in operator_agents]
        edit_max_new_tokens(sandbox, 48)  # work for the operator while its API calls fail
        wait_while_operator_alive(sandbox, ERRORS_S)
        faults.clear()
        stalls = [faults.stall(user_agent=agent, watches=True) for agent in operator_agents]
        wait_while_operator_alive(sandbox, STALL_S)
    finally:
        faults.clear()
    healed = time.monotonic()
    wait_for("the edit rolled out after the fault", lambda: serving_with(sandbox, "48"))
    row.recover_s = time.monotonic() - healed
    failed, held = sum(f.hits for f in errors), sum(f.hits for f in stalls)
    row.happened = (
        f"the operator stayed up; {failed} of its API calls got 500, {held} were held; the spec edit made "
        f"meanwhile was rolled out {row.recover_s:.0f} s after the API healed"
    )
    assert failed > 0 and sandbox.operator_alive()


def wait_while_operator_alive(sandbox: Sandbox, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert sandbox.operator_alive()
        time.sleep(1.0)


def test_operator_killed_mid_rollout_converges_after_restart(
    sandbox: Sandbox, fault_report: FaultReport
) -> None:
    row = fault_report.row("operator kill -9 in the middle of a rollout")
    edit_max_new_tokens(sandbox, 40)
    wait_for(
        "the new pod of the rollout to be created",
        lambda: any(max_new_tokens_of(p) == "40" for p in live_pods(sandbox)),
        interval=0.2,
    )
    assert sandbox.operator is not None
    os.kill(sandbox.operator.pid, signal.SIGKILL)
    killed = time.monotonic()
    sandbox.operator.wait(30)
    sandbox.restart_operator()
    wait_for("the rollout to finish after the restart", lambda: serving_with(sandbox, "40"))
    row.recover_s = time.monotonic() - killed
    pods = sandbox.list_pods(instance=NAME)
    row.happened = (
        f"killed once the new pod existed; the restarted operator finished the rollout: one pod left "
        f"({len(pods)} listed), Ready {row.recover_s:.0f} s after the kill"
    )
    assert len(live_pods(sandbox)) == 1


def stream(target: str, prompt: str, first: threading.Event) -> str:
    request = pb.GenerateRequest(
        prompt=prompt, parameters=pb.GenerationParameters(max_new_tokens=32, ignore_eos=True)
    )
    try:
        with grpc.insecure_channel(target) as channel:
            for _ in pb_grpc.TextGenerationStub(channel).GenerateStream(request, timeout=120):
                first.set()
    except grpc.RpcError as error:
        first.set()
        return str(error.code().name)  # type: ignore[attr-defined]
    return "OK"


def test_a_pod_deleted_under_load(sandbox: Sandbox, fault_report: FaultReport) -> None:
    row = fault_report.row("serving pod deleted under load")
    pod = serving_with(sandbox, "40")
    assert pod is not None
    target = f"{pod['status']['podIP']}:50051"
    firsts = [threading.Event() for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(firsts)) as pool:
        futures = [pool.submit(stream, target, f"request {i}", e) for i, e in enumerate(firsts)]
        for first in firsts:
            first.wait(120)
        sandbox.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false")
        deleted = time.monotonic()
        codes = Counter(f.result() for f in futures)
    late = stream(target, "after the delete", threading.Event())  # the old pod takes no new work
    wait_for(
        "a new pod serving",
        lambda: (p := serving_with(sandbox, "40")) and p["metadata"]["uid"] != pod["metadata"]["uid"],
    )
    row.recover_s = time.monotonic() - deleted
    row.sent = sum(codes.values()) + 1
    row.codes = codes + Counter([late])
    row.happened = (
        f"in-flight streams drained ({dict(codes)}); a request sent after the delete: {late}; a new pod "
        f"served {row.recover_s:.0f} s after the delete"
    )
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert late == "UNAVAILABLE"


def command_of(process: psutil.Process) -> list[str]:
    """Its command line while it runs; [] once it is gone, a zombie, or its pid reused."""
    try:
        return list(process.cmdline()) if process.is_running() else []
    except psutil.Error:
        return []


def test_sigkill_of_the_sandbox_leaves_no_process(
    tmp_path: Path, tiny_checkpoint: Path, fault_report: FaultReport
) -> None:
    """The sandbox main job, SIGKILLed once the runtime's ranks run: no handler of it runs, and still
    the operator, the launcher, mpirun and both ranks die with it (PR_SET_PDEATHSIG down the chain)."""
    row = fault_report.row("sandbox main job SIGKILLed (no clean-up runs)")
    shutil.copytree(tiny_checkpoint, tmp_path / MODEL_ON_NODE)
    env = {**os.environ, "PATH": f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    job = subprocess.Popen(
        [sys.executable, "-m", "bloomz_sandbox", "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[int, psutil.Process] = {}

    def ranks_running() -> bool:
        if job.poll() is not None:
            raise AssertionError(f"the main job exited early ({job.returncode})")
        for child in psutil.Process(job.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
        commands = [command_of(p) for p in seen.values()]
        return sum(1 for c in commands if c and "mpirun" not in c[0] and "bloomz_runtime.serve" in c) == 2

    try:
        wait_for("the runtime's two ranks", ranks_running)
        job.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        job.wait(30)

        def all_gone() -> bool:
            return not [p for p in seen.values() if command_of(p)]  # zombies have no command line

        wait_for("every child of the killed sandbox to be gone", all_gone, timeout=60)
        row.recover_s = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
        for process in seen.values():  # never leave anything behind, even when the test fails
            if process.is_running():
                process.kill()
    row.happened = (
        f"{len(seen)} processes (operator, launcher, mpirun, ranks, ...) were gone "
        f"{row.recover_s:.1f} s after the SIGKILL"
    )
