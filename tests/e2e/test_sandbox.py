"""End to end without a cluster: the sandbox main job with the real operator, real runtime processes,
real kubectl. One sandbox for the module (the main job in its keep-running mode), then one `--once` run.

Order matters (pytest runs a module's tests in file order): apply -> Ready -> generate -> spec edit ->
kubectl scale 1 -> 2 -> 0 -> 1 -> crash + restart -> Gaudi pod that does not fit -> delete everything ->
Ctrl-C -> nothing left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from bloomz_sandbox.node.addresses import port_listening
from helpers import LIFECYCLE_UNREACHED_RULES, conditions
from helpers import wait_for as poll_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CPU_EXAMPLE = REPO / "examples" / "bloomz-cpu.yaml"
GAUDI_EXAMPLE = REPO / "examples" / "bloomz.yaml"
NAME = "bloomz-tiny"
MODEL_ON_NODE = Path("node/var/lib/bloomz/models/bloomz-tiny")  # the example's hostPath, under the workdir
GAUDI_CARDS = 4  # examples/bloomz.yaml asks for 8: it must not fit
WAIT_S = 420.0  # generous: 2 shared cores, other test suites running at the same time


wait_for = partial(poll_until, timeout=WAIT_S, interval=1.0)


class MainJob:
    """`python -m bloomz_sandbox` as a subprocess, its output collected line by line."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.workdir = workdir
        env = {**os.environ, "PATH": f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("KUBECONFIG", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bloomz_sandbox", "--workdir", str(workdir), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # As when `make test` runs from a non-interactive shell's background job: SIGINT starts out
            # ignored, so Python installs no KeyboardInterrupt handler; the job must set its own.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        self.lines: list[str] = []
        self.descendants: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def alive_descendants(self) -> list[psutil.Process]:
        alive = []
        for process in self.descendants.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                continue
        return alive

    def wait_for_line(self, text: str, timeout: float) -> None:
        wait_for(f"{text!r} in the main job's output", lambda: self._seen(text), timeout=timeout)

    def _seen(self, text: str) -> bool:
        self.remember_descendants()
        if self.process.poll() is not None and not any(text in line for line in self.lines):
            self._reader.join(timeout=5)
            raise AssertionError(f"the main job exited ({self.process.returncode}):\n{self.output}")
        return any(text in line for line in self.lines)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl") or str(REPO / ".tools" / "bin" / "kubectl")
        env = {**os.environ, "KUBECONFIG": str(self.workdir / "kubeconfig")}
        result = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def get(self, *args: str) -> dict[str, Any]:
        result = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        return self.process.returncode


def prepare_workdir(workdir: Path, checkpoint: Path) -> None:
    """The session's tiny checkpoint where the example's hostPath is: the job then skips building it."""
    shutil.copytree(checkpoint, workdir / MODEL_ON_NODE)


def pods_of(job: MainJob, instance: str) -> list[dict[str, Any]]:
    items = job.get("pods").get("items") or []
    return [p for p in items if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == instance]


def ready_pod(job: MainJob) -> dict[str, Any] | None:
    for pod in pods_of(job, NAME):
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if (
            statuses
            and all(s.get("ready") for s in statuses)
            and not pod["metadata"].get("deletionTimestamp")
        ):
            return pod
    return None


def resource_ready(job: MainJob) -> dict[str, Any] | None:
    resource = job.get("bloomz", NAME)
    ready = conditions(resource).get("Ready", {}).get("status") == "True"
    latency = (resource.get("status") or {}).get("latency") or {}
    return resource if ready and latency.get("seconds") else None


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[MainJob]:
    workdir = tmp_path_factory.mktemp("sandbox")
    prepare_workdir(workdir, tiny_checkpoint)
    main_job = MainJob(["--gaudi-cards", str(GAUDI_CARDS), "--timeout", str(WAIT_S)], workdir)
    try:
        yield main_job
    finally:
        main_job.stop()


def test_the_example_becomes_ready_with_a_latency_and_answers(job: MainJob) -> None:
    job.wait_for_line("the sandbox keeps running", WAIT_S)
    output = job.output
    assert "model: reusing" in output and "export KUBECONFIG=" in output
    assert "$ kubectl get bloomz" in output and "TPOT-MS" in output
    table = output.split("$ kubectl get bloomz\n", 1)[1].splitlines()
    assert table[0].split()[:3] == ["NAME", "DEVICE", "CARDS"] and "TPOT-MS" in table[0]
    assert table[1].split()[0] == NAME and "Ready" in table[1].split()
    assert "$ generate" in output

    resource = resource_ready(job)
    assert resource is not None
    latency = resource["status"]["latency"]
    assert latency["seconds"] > 0 and latency["tokensPerSecond"] > 0
    assert latency["maxNewTokens"] == 16 and latency["iterations"] == 3
    assert conditions(resource)["Scheduled"]["status"] == "True"
    assert conditions(resource)["ModelLoaded"]["status"] == "True"

    pod = ready_pod(job)
    assert pod is not None and pod["spec"]["nodeName"] == "sandbox-node"
    address = pod["status"]["podIP"]
    client = [sys.executable, "-m", "bloomz_runtime.client", "--target", f"{address}:50051", "--json"]
    result = subprocess.run(
        [
            *client,
            "generate",
            "DeepSpeed is a machine learning framework",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["generated_tokens"] == 8 and answer["text"]


def test_a_spec_edit_replaces_the_pod_and_measures_again(job: MainJob) -> None:
    before = resource_ready(job)
    assert before is not None
    old_pod = ready_pod(job)
    assert old_pod is not None
    patch = {"spec": {"generation": {"maxNewTokens": 32}, "benchmark": {"maxNewTokens": 8}}}
    job.kubectl("patch", "bloomz", NAME, "--type", "merge", "-p", json.dumps(patch))

    def remeasured() -> dict[str, Any] | None:
        resource = resource_ready(job)
        latency = (resource or {}).get("status", {}).get("latency") or {}
        if not resource or latency.get("maxNewTokens") != 8:
            return None
        pod = ready_pod(job)
        return resource if pod and pod["metadata"]["name"] != old_pod["metadata"]["name"] else None

    after = wait_for("a new pod and a new latency for 8 tokens", remeasured)
    assert after["status"]["latency"]["measuredAt"] != before["status"]["latency"]["measuredAt"]
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"] > 1
    names = [p["metadata"]["name"] for p in pods_of(job, NAME)]
    assert old_pod["metadata"]["name"] not in names
    new_pod = ready_pod(job)
    assert new_pod is not None and "--max-new-tokens" in new_pod["spec"]["containers"][0]["args"]
    args = new_pod["spec"]["containers"][0]["args"]
    assert args[args.index("--max-new-tokens") + 1] == "32"


def test_kubectl_scale_1_2_0_1_keeps_the_latency_and_the_card_count(job: MainJob) -> None:
    # Measure once per template from now on: any new measurement below would be a scale's doing.
    job.kubectl(
        "patch", "bloomz", NAME, "--type", "merge", "-p", '{"spec":{"benchmark":{"intervalSeconds":0}}}'
    )
    before = wait_for("Ready, measured", lambda: resource_ready(job))
    measured_at = before["status"]["latency"]["measuredAt"]
    # The sandbox's CPU roofline (operator setting devices.cpu.memoryBandwidth) gives an efficiency.
    assert 0 < before["status"]["latency"]["bandwidthEfficiency"] < 2
    cards = before["spec"]["cards"]

    def settled(replicas: int) -> dict[str, Any] | None:
        resource = job.get("bloomz", NAME)
        status = resource.get("status") or {}
        pods = [p for p in pods_of(job, NAME) if not p["metadata"].get("deletionTimestamp")]
        serving = [
            p
            for p in pods
            if all(s.get("ready") for s in p.get("status", {}).get("containerStatuses") or [{}])
        ]
        phase = "Ready" if replicas else "Stopped"
        done = len(pods) == len(pods_of(job, NAME)) == len(serving) == replicas
        counts = (status.get("replicas"), status.get("readyReplicas"), status.get("phase"))
        return resource if done and counts == (replicas, replicas, phase) else None

    for replicas in (2, 0, 1):
        result = job.kubectl("scale", f"bloomz/{NAME}", f"--replicas={replicas}")
        assert "scaled" in result.stdout
        resource = wait_for(f"{replicas} replica(s) settled", lambda: settled(replicas))  # noqa: B023
        status = resource["status"]
        pods = pods_of(job, NAME)
        # Card accounting: each replica asks for `cards` CPUs on the node, no more, no less.
        asked = sum(int(p["spec"]["containers"][0]["resources"]["requests"]["cpu"]) for p in pods)
        assert asked == cards * replicas and all(p["spec"]["nodeName"] == "sandbox-node" for p in pods)
        selected = job.get("pods", "-l", status["selector"]).get("items") or []
        assert sorted(p["metadata"]["name"] for p in selected) == sorted(p["metadata"]["name"] for p in pods)
        scale = json.loads(
            job.kubectl(
                "get",
                "--raw",
                f"/apis/inference.bloomz.dev/v1alpha1/namespaces/default/bloomzinferences/{NAME}/scale",
            ).stdout
        )
        assert scale["spec"]["replicas"] == scale["status"]["replicas"] == replicas
        # The pods that serve are the same template: no new benchmark, no blank latency.
        assert status["latency"]["measuredAt"] == measured_at
        if replicas == 0:
            ready = conditions(resource)["Ready"]
            assert (ready["status"], ready["reason"]) == ("False", "ScaledToZero")


def test_a_killed_runtime_is_restarted_and_the_resource_is_ready_again(job: MainJob) -> None:
    pod = wait_for("a ready pod", lambda: ready_pod(job))
    status = pod["status"]["containerStatuses"][0]
    assert status["containerID"].startswith("sandbox://")
    pid = int(status["containerID"].removeprefix("sandbox://"))
    assert "bloomz_runtime.launch" in " ".join(psutil.Process(pid).cmdline())
    os.kill(pid, signal.SIGKILL)

    def restarted_and_ready() -> dict[str, Any] | None:
        current = ready_pod(job)
        if not current or current["metadata"]["name"] != pod["metadata"]["name"]:
            return None
        restarts = current["status"]["containerStatuses"][0]["restartCount"]
        return current if restarts >= 1 and resource_ready(job) else None

    current = wait_for("the pod restarted and Ready", restarted_and_ready)
    container = current["status"]["containerStatuses"][0]
    assert container["lastState"]["terminated"]["exitCode"] == 137
    assert int(container["containerID"].removeprefix("sandbox://")) != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_gaudi_resource_that_does_not_fit_is_not_scheduled_with_the_message(job: MainJob) -> None:
    name = yaml.safe_load(GAUDI_EXAMPLE.read_text())["metadata"]["name"]
    job.kubectl("apply", "--validate=false", "-f", str(GAUDI_EXAMPLE))

    def unscheduled() -> dict[str, Any] | None:
        # Scheduled=False first says "waiting for the scheduler", then carries the scheduler's message.
        scheduled = conditions(job.get("bloomz", name)).get("Scheduled") or {}
        insufficient = "Insufficient" in scheduled.get("message", "")
        return scheduled if scheduled.get("status") == "False" and insufficient else None

    scheduled = wait_for("Scheduled=False on the Gaudi resource", unscheduled, timeout=120)
    assert "0/1 nodes are available: 1 Insufficient habana.ai/gaudi." in scheduled["message"]
    pods = pods_of(job, name)
    assert pods and all(p["status"]["phase"] == "Pending" for p in pods)
    job.kubectl("delete", "-f", str(GAUDI_EXAMPLE), "--wait=false")


def test_deleting_everything_leaves_no_process_and_no_port(job: MainJob) -> None:
    addresses = {p["status"]["podIP"] for p in pods_of(job, NAME) if p.get("status", {}).get("podIP")}
    assert addresses
    job.remember_descendants()
    job.kubectl("delete", "-f", str(CPU_EXAMPLE), "--wait=false")

    def all_gone() -> bool:
        job.remember_descendants()
        runtimes = [p for p in job.alive_descendants() if "bloomz_runtime" in " ".join(p.cmdline())]
        return not job.get("pods").get("items") and not job.get("bloomz").get("items") and not runtimes

    wait_for("no pod, no resource, no runtime process", all_gone, timeout=180)
    assert not any(port_listening(address, 50051) for address in addresses)
    assert not any(port_listening(address, 9090) for address in addresses)

    assert job.stop() == 0, job.output
    assert "stopped: no process left" in job.output
    assert job.alive_descendants() == []


def test_the_operator_used_its_chart_rbac_and_nothing_else(job: MainJob) -> None:
    """Least privilege: over the whole lifecycle above, no call of the operator was refused, and every
    (group, resource, verb) its chart grants was used (or is a lifecycle-unreached rule, with its reason)."""
    from bloomz_operator.rbac import CLUSTER_RULES, NAMESPACED_RULES
    from bloomz_sandbox.chart import NAMESPACE, RELEASE

    user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    lines = (job.workdir / "logs" / "audit.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["user"] == user]
    assert records, "the operator made no request with its service account"
    refused = sorted(
        {
            (r["verb"], r["group"], r["resource"], r["subresource"], r["namespace"])
            for r in records
            if r["code"] in (401, 403)
        }
    )
    assert not refused, f"refused: {refused}"
    used = {
        (r["group"], f"{r['resource']}/{r['subresource']}" if r["subresource"] else r["resource"], r["verb"])
        for r in records
        if r["resource"] and r["code"] < 500
    }
    granted = {
        (group, resource, verb)
        for rule in NAMESPACED_RULES + CLUSTER_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    unused = sorted(granted - used - set(LIFECYCLE_UNREACHED_RULES))
    assert not unused, f"granted but never used: {unused}"
    assert not used - granted  # nothing refused means this holds; a second look at the same fact
    assert set(LIFECYCLE_UNREACHED_RULES) <= granted


def test_the_main_job_once_exits_zero(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prepare_workdir(tmp_path, tiny_checkpoint)
    once = MainJob(["--once", "--timeout", str(WAIT_S)], tmp_path)

    def exited() -> bool:
        once.remember_descendants()  # to prove afterwards that none of them outlived the job
        return once.process.poll() is not None

    try:
        wait_for("the --once run to exit", exited, timeout=WAIT_S + 120, interval=0.5)
        code = once.process.returncode
    finally:
        once.stop()
    assert code == 0, once.output
    output = once.output
    for expected in ("is Ready, latency", "$ kubectl get bloomz", "$ generate", "no listening port left"):
        assert expected in output, output
    assert "stopped: no process left" in output
    assert once.alive_descendants() == []
