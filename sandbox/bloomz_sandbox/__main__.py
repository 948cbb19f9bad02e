"""The sandbox main job: the whole system on this machine, no cluster, no Gaudi, no Hub.

    python -m bloomz_sandbox [--once] [--example examples/bloomz-cpu.yaml]
        [--gaudi-cards 8] [--nodes 1] [--workdir .cache/sandbox] [--timeout 900]

Builds the tiny BLOOM checkpoint where the example's hostPath volume lives on the simulated node,
starts the API emulator, the real operator and the local pod runner, `kubectl apply`s the example,
shows progress until the resource is Ready with a measured latency, prints `kubectl get bloomz` and
`kubectl get pods`, sends one generate request to a pod behind the resource's Service (a multi-node
group's leader), then waits for Ctrl-C (or, with --once,
deletes everything, checks that no process is left and exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from bloomz_api.constants import BENCHMARK_PROMPT, GRPC_PORT

from bloomz_sandbox import progress
from bloomz_sandbox.node.addresses import port_listening
from bloomz_sandbox.node.process_spec import host_path_on_node
from bloomz_sandbox.node.scheduling import parse_amounts
from bloomz_sandbox.stack import STOP_LIMIT_S, Sandbox, SandboxOptions, repository_root


class Console:
    """Progress output with the seconds since start, flushed at once (the job is long-running)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def block(self, title: str, text: str) -> None:
        print(f"\n$ {title}\n{text.rstrip()}\n", flush=True)


def capacity_item(text: str) -> tuple[str, str]:
    name, separator, quantity = text.partition("=")
    if not separator or not name or not quantity:
        raise argparse.ArgumentTypeError(f"expected RESOURCE=QUANTITY, got {text!r}")
    try:
        parse_amounts({name: quantity})
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{quantity!r} is not a Kubernetes quantity") from error
    return name, quantity


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bloomz_sandbox",
        description="Local sandbox (a development tool): API emulator + operator + local pod runner.",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit 0 after the demo instead of waiting for Ctrl-C"
    )
    parser.add_argument("--example", type=Path, default=None, help="default: examples/bloomz-cpu.yaml")
    parser.add_argument("--gaudi-cards", type=int, default=8, help="habana.ai/gaudi on the simulated node")
    parser.add_argument(
        "--nodes", type=int, default=1, help="simulated nodes (a multi-node group needs one per pod)"
    )
    parser.add_argument(
        "--node-capacity",
        action="append",
        default=[],
        metavar="RESOURCE=QUANTITY",
        type=capacity_item,
        help="override the simulated node's capacity, e.g. nvidia.com/gpu=2 or cpu=8 (repeatable)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".cache/sandbox"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Ready + latency")
    parser.add_argument("--prompt", default=BENCHMARK_PROMPT, help="the generate request sent at the end")
    parser.add_argument(
        "--operator-process",
        action="store_true",
        help="run the operator as a plain subprocess (admin kubeconfig) instead of helm-installing its chart",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    return args


def load_resources(path: Path) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return [d for d in documents if d.get("kind") == "BloomzInference"]


def local_model_dir(resource: dict[str, Any], node_root: Path) -> Path | None:
    """Where the example's model path lives on the simulated node (None: not on a hostPath volume)."""
    spec = resource.get("spec") or {}
    storage = spec.get("storage") or {}
    model = str(spec.get("model", ""))
    host_path = (storage.get("hostPath") or {}).get("path")
    mount_path = str(storage.get("mountPath") or "/models").rstrip("/")
    if not host_path or not model.startswith(mount_path + "/"):
        return None
    return host_path_on_node(node_root, host_path) / model[len(mount_path) + 1 :]


def ensure_tiny_model(directory: Path, console: Console) -> None:
    if (directory / "config.json").is_file():
        console.say(f"model: reusing {directory}")
        return
    console.say(f"model: building the tiny BLOOM checkpoint into {directory} (python -m bloomz_runtime.tiny)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.with_name(directory.name + ".partial")
    command = [sys.executable, "-m", "bloomz_runtime.tiny", "--out", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{result.stdout}\n{result.stderr}")
    partial.rename(directory)  # complete or absent: an interrupted build is never reused
    console.say("model: built")


def show_progress(sandbox: Sandbox, name: str, console: Console, seen: dict[str, str]) -> None:
    current: dict[str, str] = {}
    resource = sandbox.get_resource(name)
    if resource is not None:
        current[f"resource {name}"] = progress.resource_line(resource)
    for pod in sandbox.list_pods(instance=name):
        current[f"pod {pod['metadata']['name']}"] = progress.pod_line(pod)
    for line in progress.changes(seen, current):
        console.say(line)
    seen.clear()
    seen.update(current)


def runs_locally(resource: dict[str, Any]) -> bool:
    """Only CPU resources are served in the sandbox (spec.device defaults to hpu in the CRD)."""
    return (resource.get("spec") or {}).get("device", "hpu") == "cpu"


def ready_pod_ip(sandbox: Sandbox, name: str) -> str:
    """A ready pod behind the resource's Service (the leader of a multi-node group), else any ready pod."""
    behind_service = sandbox.service_endpoints(name)
    if behind_service:
        return behind_service[0]
    for pod in sandbox.list_pods(instance=name):
        status = pod.get("status") or {}
        if status.get("podIP") and all(c.get("ready") for c in status.get("containerStatuses") or [{}]):
            return str(status["podIP"])
    raise RuntimeError(f"no ready pod of {name}")


def wait_ready(sandbox: Sandbox, name: str, timeout: float, console: Console) -> dict[str, Any]:
    """Wait until the resource is Ready with a latency, printing every change on the way."""
    seen: dict[str, str] = {}

    def measured() -> dict[str, Any] | None:
        resource = sandbox.get_resource(name)
        return resource if resource is not None and progress.ready_with_latency(resource) else None

    resource: dict[str, Any] = sandbox.wait_for(
        f"{name} Ready with a measured latency",
        measured,
        timeout=timeout,
        interval=1.0,
        on_tick=lambda: show_progress(sandbox, name, console, seen),
    )
    show_progress(sandbox, name, console, seen)
    console.say(f"{name} is Ready, {progress.latency_text(resource['status']['latency'])}")
    return resource


def wait_scheduling_reported(sandbox: Sandbox, name: str, timeout: float, console: Console) -> None:
    """For an hpu/cuda resource: its pods are bound or unschedulable, never started (no device here)."""
    seen: dict[str, str] = {}
    sandbox.wait_for(
        f"{name}'s Scheduled condition",
        lambda: "Scheduled" in progress.condition_types(sandbox.get_resource(name) or {}),
        timeout=timeout,
        interval=1.0,
        on_tick=lambda: show_progress(sandbox, name, console, seen),
    )
    show_progress(sandbox, name, console, seen)
    console.say(f"{name}: its device is simulated here, so its pods are scheduled (or not) but never started")


def run_demo(
    sandbox: Sandbox,
    example: Path,
    resources: list[dict[str, Any]],
    args: argparse.Namespace,
    console: Console,
) -> None:
    console.say(f"kubectl apply --validate=false -f {example}")
    console.block("kubectl apply", sandbox.kubectl("apply", "--validate=false", "-f", str(example)).stdout)
    served = []
    for resource in resources:
        name = resource["metadata"]["name"]
        if runs_locally(resource):
            wait_ready(sandbox, name, args.timeout, console)
            served.append(name)
        else:
            wait_scheduling_reported(sandbox, name, args.timeout, console)
    console.block("kubectl get bloomz", sandbox.kubectl("get", "bloomz").stdout)
    console.block("kubectl get pods -o wide", sandbox.kubectl("get", "pods", "-o", "wide").stdout)
    if not served:
        console.say("no CPU resource in the example: no generate request to send")
        return
    target = f"{ready_pod_ip(sandbox, served[0])}:{GRPC_PORT}"
    command = [sys.executable, "-m", "bloomz_runtime.client", "generate", "--target", target]
    command += [args.prompt, "--max-new-tokens", "20"]
    console.say(
        f"python -m bloomz_runtime.client generate --target {target} {args.prompt!r} --max-new-tokens 20"
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(
            f"the generate request failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    console.block("generate", f"{args.prompt}{result.stdout}")


def delete_and_check(sandbox: Sandbox, example: Path, names: list[str], console: Console) -> None:
    """Delete the resources, wait until their pods and processes are gone, then prove nothing is left."""
    pod_ips = {
        str((pod.get("status") or {}).get("podIP"))
        for pod in sandbox.list_pods()
        if (pod.get("status") or {}).get("podIP")
    }
    console.say(f"kubectl delete -f {example}")
    sandbox.kubectl("delete", "-f", str(example), "--wait=false")
    runner = sandbox.runner
    assert runner is not None
    sandbox.wait_for(
        "the pods and their processes to be gone",
        lambda: (
            not sandbox.list_pods()
            and not runner.running_process_ids(namespace=sandbox.options.namespace)
            and not any(sandbox.get_resource(name) for name in names)
        ),
        timeout=180,
    )
    listening = sorted(ip for ip in pod_ips if port_listening(ip, GRPC_PORT))
    if listening:
        raise RuntimeError(f"gRPC ports still listening after deletion: {listening}")
    console.say("deleted: no pod, no runtime process, no listening port left")


def last_resort_exit(after_s: float) -> None:
    """Should the stop overrun `after_s` anyway, exit with 1: every child was started with
    PR_SET_PDEATHSIG, so the kernel SIGKILLs them as this process ends."""

    def expire() -> None:
        with contextlib.suppress(OSError):  # never block on a full pipe here
            os.set_blocking(2, False)
            os.write(2, f"stop overran {after_s:.0f} s: exiting; the kernel kills every child\n".encode())
        os._exit(1)

    timer = threading.Timer(after_s, expire)
    timer.daemon = True
    timer.start()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    example = args.example or repository_root() / "examples" / "bloomz-cpu.yaml"
    resources = load_resources(example)
    if not resources:
        console.say(f"{example} holds no BloomzInference")
        return 2
    names = [r["metadata"]["name"] for r in resources]
    options = SandboxOptions(
        workdir=args.workdir,
        operator_from_chart=not args.operator_process,
        gaudi_cards=args.gaudi_cards,
        nodes=args.nodes,
        capacity_overrides=dict(args.node_capacity),
    )
    sandbox = Sandbox(options)

    # A signal raises KeyboardInterrupt once, during start-up and the demo only. Once the job waits
    # for Ctrl-C or stops, it is a flag: an exception raised at an arbitrary point of the stop could
    # leave it half done (a lock held, the operator never signalled).
    signals: list[int] = []
    interruptible = [True]

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)
        if interruptible[0]:
            interruptible[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    code = 0
    try:
        for resource in resources:
            model_dir = local_model_dir(resource, sandbox.node_root)
            if model_dir is not None:
                ensure_tiny_model(model_dir, console)
        sandbox.start(on_step=console.say)
        console.say(f"use kubectl from another terminal: export KUBECONFIG={sandbox.kubeconfig}")
        run_demo(sandbox, example, resources, args, console)
        if args.once:
            delete_and_check(sandbox, example, names, console)
        else:
            console.say("the sandbox keeps running; press Ctrl-C to stop it. In another terminal:")
            print(f"    export KUBECONFIG={sandbox.kubeconfig}\n    kubectl get bloomz,pods\n", flush=True)
            interruptible[0] = False
            while sandbox.operator_alive() and not signals:
                time.sleep(0.2)
            if not signals:
                raise RuntimeError(f"the operator exited:\n{sandbox.log_tail()}")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        console.say("interrupted")
    except Exception as error:  # a failed demo must say why and still clean up
        console.say(f"FAILED: {error}")
        code = 1
    finally:
        interruptible[0] = False
        last_resort_exit(STOP_LIMIT_S)
        runner = sandbox.runner
        if sandbox.chart is not None:
            console.say(f"helm uninstall {sandbox.chart.release} -n {sandbox.chart.namespace} (CRD kept)")
        console.say("stopping the operator, the pod runner and the API emulator")
        sandbox.stop()
        left = runner.running_process_ids() if runner is not None else []
        if left:
            console.say(f"processes still alive after stop: {left}")
            code = code or 1
        else:
            console.say("stopped: no process left")
    return code


if __name__ == "__main__":
    sys.exit(main())
