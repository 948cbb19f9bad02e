"""What N BloomzInference resources cost the operator: CPU, memory and API calls per second.

    python scripts/bench_operator_scale.py --resources 500 --window 60

Runs the real operator (`python -m bloomz_operator --standalone`, a subprocess) against the sandbox's
Kubernetes API emulator (in this process, recording every request), creates N CPU resources of one replica
each (no pod runner: the pods stay Pending, so no runtime starts), waits until every resource has a pod and
a status, then measures a steady-state window: the operator process's CPU time (from /proc), its resident
memory, and the API requests it made (its own client and Kopf's), per verb and resource. `--foreign-pods`
adds pods the operator does not own to the namespace (what a busy shared namespace looks like).
Prints one Markdown table; figures depend on the machine, so compare runs made on the same one.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import kubernetes
import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.kubeapi import USER_AGENT
from bloomz_sandbox.apiserver import SandboxAPIServer

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
NS = "default"
PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    # The operator must not outlive this script, whatever ends it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_mib(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def call_kind(method: str, path: str, query: str) -> str:
    """ "<verb> <resource>" of a request (e.g. "list pods", "patch bloomzinferences/status")."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return f"{method} discovery"
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    watch = parse_qs(query).get("watch", ["false"])[0] in ("true", "1")
    verb = {"GET": "watch" if watch else ("get" if len(rest) > 1 else "list"), "POST": "create"}.get(
        method, method.lower()
    )
    return f"{verb} {resource}"


def resource_body(index: int) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "bloomz-cpu.yaml").read_text())
    body["metadata"] = {"name": f"scale-{index:04d}", "namespace": NS}
    body["spec"]["replicas"] = 1
    return dict(body)


def foreign_pod(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"other-{index:04d}", "labels": {"app": "someone-else"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def settled(custom: Any, core: Any, count: int) -> bool:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    with_status = sum(1 for r in items if (r.get("status") or {}).get("phase"))
    raw = core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/managed-by=bloomz-operator")
    return with_status >= count and len(raw.items) >= count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=500)
    parser.add_argument("--window", type=float, default=60.0, help="steady-state seconds measured")
    parser.add_argument("--foreign-pods", type=int, default=0, help="pods of someone else in the namespace")
    parser.add_argument("--settle-timeout", type=float, default=900.0)
    parser.add_argument("--reconcile-interval", type=float, help="the operator's reconcileIntervalSeconds")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, SandboxAPIServer(crd_paths=[CRD], record_requests=True) as api:
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        client = api.api_client()
        core: Any = kubernetes.client.CoreV1Api(client)
        custom: Any = kubernetes.client.CustomObjectsApi(client)
        for i in range(args.foreign_pods):
            core.create_namespaced_pod(NS, foreign_pod(i), _preload_content=False)
        config = Path(tmp) / "operator.yaml"
        config.write_text(
            yaml.safe_dump(
                {"reconcileIntervalSeconds": args.reconcile_interval} if args.reconcile_interval else {}
            )
        )
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "BLOOMZ_BIND_HOST": "127.0.0.1"}
        command = [
            *(sys.executable, "-m", "bloomz_operator", "--standalone", "-n", NS),
            *("--log-level", "WARNING", "--liveness-port", str(free_port()), "--config", str(config)),
        ]
        log = open(Path(tmp) / "operator.log", "w+b")  # noqa: SIM115 - closed below
        operator = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        try:
            started = time.monotonic()
            for i in range(args.resources):
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, resource_body(i))
            created_s = time.monotonic() - started
            while not settled(custom, core, args.resources):
                if operator.poll() is not None or time.monotonic() - started > args.settle_timeout:
                    log.seek(0)
                    sys.stderr.write(log.read().decode(errors="replace")[-4000:])
                    raise SystemExit("the operator did not settle")
                time.sleep(2.0)
            settle_s = time.monotonic() - started
            settle_cpu = cpu_seconds(operator.pid)
            since = len(api.requests)
            cpu_before, wall_before = cpu_seconds(operator.pid), time.monotonic()
            time.sleep(args.window)
            cpu_used, wall = cpu_seconds(operator.pid) - cpu_before, time.monotonic() - wall_before
            memory = memory_mib(operator.pid)
            requests = [r for r in api.requests[since:] if r.user_agent.startswith((USER_AGENT, "kopf"))]
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
            log.close()

    kinds = collections.Counter(call_kind(r.method, r.path, r.query) for r in requests)
    rss, peak = memory.get("VmRSS", 0.0), memory.get("VmHWM", 0.0)
    rows = [
        (f"create {args.resources} resources (client side)", f"{created_s:.1f} s"),
        (
            "every resource has a pod and a status after",
            f"{settle_s:.1f} s (operator CPU {settle_cpu:.1f} s)",
        ),
        (
            "operator CPU, steady state",
            f"{cpu_used / wall:.1%} of one core ({cpu_used:.1f} s in {wall:.0f} s)",
        ),
        ("operator memory", f"RSS {rss:.0f} MiB, peak {peak:.0f} MiB"),
        ("API requests, steady state", f"{len(requests) / wall:.1f} /s"),
        *((f"- {kind}", f"{count / wall:.2f} /s") for kind, count in kinds.most_common()),
    ]
    title = f"## Operator cost: {args.resources} resources, {args.foreign_pods} foreign pods"
    if args.reconcile_interval:
        title += f", reconcileIntervalSeconds {args.reconcile_interval:g}"
    print(f"{title}, {wall:.0f} s\n")
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
