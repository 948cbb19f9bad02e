"""Faults against real runtime processes (the launcher, mpirun, two ranks, real gRPC clients): bad and
oversized requests, 200 clients against a queue of 64, a rank stopped (SIGSTOP) or killed (-9) while
requests run. Every request must end with a result or an explicit status code, never hang or vanish.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_runtime.watchdog import EXIT_STUCK
from fault_figures import FaultReport
from grpc_health.v1 import health_pb2
from helpers import RuntimeProcess, health_status, run_runtime, start_runtime, stop_runtime, wait_for_serving
from helpers import greedy_request as greedy

pytestmark = pytest.mark.slow

STEP_TIMEOUT_S = 5.0
LIMITS = ["--max-input-tokens", "64", "--max-new-tokens", "64", "--max-total-tokens", "100"]


def code_of(error: grpc.RpcError) -> str:
    return str(error.code().name)  # type: ignore[attr-defined]


def generate(stub: pb_grpc.TextGenerationStub, request: pb.GenerateRequest, timeout: float = 120) -> str:
    try:
        stub.Generate(request, timeout=timeout)
    except grpc.RpcError as error:
        return code_of(error)
    return "OK"


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path) -> Iterator[RuntimeProcess]:
    args = [*LIMITS, "--max-queue-size", "64", "--max-batch-size", "8", "--step-timeout-s", "60"]
    args.append("--warmup-largest")  # 8 x 64 tokens: an OOM would show here, at start-up
    with run_runtime(tiny_checkpoint, extra_args=args) as rt:
        yield rt


def test_malformed_and_oversized_requests_are_refused_and_serving_goes_on(
    runtime: RuntimeProcess, fault_report: FaultReport
) -> None:
    row = fault_report.row("malformed and oversized gRPC requests")
    # gRPC answers a body that does not parse as the request message UNKNOWN, before our handler runs.
    row.refused = row.refused | {"UNKNOWN"}
    with grpc.insecure_channel(runtime.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        raw = channel.unary_unary("/bloomz.v1.TextGeneration/Generate")  # bytes in, bytes out
        params = pb.GenerationParameters
        cases: dict[str, str] = {}
        try:
            raw(b"\xff\xff\xff\xff", timeout=30)
            cases["not protobuf"] = "OK"
        except grpc.RpcError as error:
            cases["not protobuf"] = code_of(error)
        cases["empty prompt"] = generate(stub, pb.GenerateRequest(prompt=""))
        cases["3 MB prompt"] = generate(stub, pb.GenerateRequest(prompt="x" * 3_000_000))
        cases["5 MB message"] = generate(stub, pb.GenerateRequest(prompt="y" * 5_000_000))
        cases["300-token prompt"] = generate(stub, pb.GenerateRequest(prompt="word " * 300))
        cases["prompt + max_new over max_total"] = generate(
            stub, pb.GenerateRequest(prompt="word " * 50, parameters=params(max_new_tokens=64))
        )
        cases["negative temperature"] = generate(
            stub, pb.GenerateRequest(prompt="hi", parameters=params(do_sample=True, temperature=-1))
        )
        cases["max_new_tokens over the limit"] = generate(
            stub, pb.GenerateRequest(prompt="hi", parameters=params(max_new_tokens=10_000))
        )
        after = generate(stub, greedy("DeepSpeed is", 8))
    row.sent = len(cases) + 1
    row.codes = Counter([*cases.values(), after])
    row.happened = "; ".join(f"{what}: {code}" for what, code in cases.items()) + "; then a valid request: OK"
    assert "OK" not in cases.values(), cases
    assert set(cases.values()) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNKNOWN"}, cases
    assert cases["3 MB prompt"] == "INVALID_ARGUMENT" and cases["300-token prompt"] == "INVALID_ARGUMENT"
    assert cases["prompt + max_new over max_total"] == "INVALID_ARGUMENT"
    assert after == "OK"
    assert health_status(runtime.target) == health_pb2.HealthCheckResponse.SERVING


def test_200_clients_against_a_queue_of_64(runtime: RuntimeProcess, fault_report: FaultReport) -> None:
    row = fault_report.row("200 concurrent clients, queue of 64, batch of 8")
    clients = 200
    health_during: list[int | None] = []
    done = threading.Event()

    def watch_health() -> None:
        while not done.is_set():
            health_during.append(health_status(runtime.target, timeout=5.0))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_health, daemon=True)
    with grpc.insecure_channel(runtime.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        started = time.monotonic()
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [
                pool.submit(generate, stub, greedy(f"client {i} says", 16), 600) for i in range(clients)
            ]
            codes = Counter(f.result() for f in futures)
        elapsed = time.monotonic() - started
        done.set()
        watcher.join(timeout=10)
        after = generate(stub, greedy("DeepSpeed is", 4))
    row.sent = clients
    row.codes = codes
    row.recover_s = 0.0
    serving = sum(1 for s in health_during if s == health_pb2.HealthCheckResponse.SERVING)
    row.happened = (
        f"each call answered in {elapsed:.0f} s in all: {codes.get('OK', 0)} OK, "
        f"{codes.get('RESOURCE_EXHAUSTED', 0)} RESOURCE_EXHAUSTED at the door; health answered SERVING "
        f"{serving}/{len(health_during)} times meanwhile"
    )
    assert sum(codes.values()) == clients
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= 64  # the queue starts empty: its first 64 places are always taken
    assert health_during and all(s == health_pb2.HealthCheckResponse.SERVING for s in health_during)
    assert after == "OK"


def rank_process(launcher: psutil.Process, rank: int) -> psutil.Process:
    for process in launcher.children(recursive=True):
        try:
            if "bloomz_runtime.serve" in " ".join(process.cmdline()) and process.environ().get(
                "OMPI_COMM_WORLD_RANK"
            ) == str(rank):
                return process
        except psutil.Error:
            continue
    raise LookupError(f"rank {rank} not found under {launcher.pid}")


def stream_until_end(
    stub: pb_grpc.TextGenerationStub, request: pb.GenerateRequest, first: threading.Event
) -> str:
    try:
        for _ in stub.GenerateStream(request, timeout=180):
            first.set()
    except grpc.RpcError as error:
        return code_of(error)
    return "OK"


def rank_fault(tiny_checkpoint: Path, report: FaultReport, name: str, sig: int) -> None:
    """Two ranks, 6 streaming requests running, then `sig` to rank 1: every request must end with a
    result or UNAVAILABLE, health must leave SERVING, and the launcher must exit non-zero."""
    row = report.row(name)
    args = [*LIMITS, "--step-timeout-s", str(STEP_TIMEOUT_S), "--max-batch-size", "8"]
    rt = start_runtime(tiny_checkpoint, world_size=2, extra_args=args)
    victim: psutil.Process | None = None
    try:
        wait_for_serving(rt.target, 300, rt.process)
        victim = rank_process(psutil.Process(rt.process.pid), 1)
        with grpc.insecure_channel(rt.target) as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            firsts = [threading.Event() for _ in range(6)]
            with concurrent.futures.ThreadPoolExecutor(len(firsts)) as pool:
                futures = [
                    pool.submit(stream_until_end, stub, greedy(f"request {i}", 64), first)
                    for i, first in enumerate(firsts)
                ]
                for first in firsts:
                    first.wait(timeout=120)
                faulted = time.monotonic()
                victim.send_signal(sig)
                codes = Counter(f.result() for f in futures)
                answered = time.monotonic() - faulted
        code = rt.process.wait(timeout=120)
        exited = time.monotonic() - faulted
    finally:
        if victim is not None:  # a stopped rank ignores everything but SIGKILL and SIGCONT
            for last in (signal.SIGCONT, signal.SIGKILL):
                try:
                    victim.send_signal(last)
                except psutil.Error:
                    break
        stop_runtime(rt, timeout=30)
    row.sent = sum(codes.values())
    row.codes = codes
    row.recover_s = exited
    row.happened = (
        f"every request answered {answered:.1f} s after the fault; the launcher exited {code} after "
        f"{exited:.1f} s (the pod restarts); step limit {STEP_TIMEOUT_S:.0f} s"
    )
    assert set(codes) <= {"OK", "UNAVAILABLE"}, (codes, rt.log()[-3000:])
    assert code != 0
    return None


def test_sigstop_of_a_rank_under_load_trips_the_watchdog(
    tiny_checkpoint: Path, fault_report: FaultReport
) -> None:
    rank_fault(tiny_checkpoint, fault_report, "SIGSTOP of rank 1 under load (a hang)", signal.SIGSTOP)
    row = fault_report.rows[-1]
    assert row.codes.get("UNAVAILABLE", 0) > 0
    assert f"exited {EXIT_STUCK}" in row.happened


def test_kill_9_of_a_rank_under_load(tiny_checkpoint: Path, fault_report: FaultReport) -> None:
    rank_fault(tiny_checkpoint, fault_report, "kill -9 of rank 1 under load", signal.SIGKILL)
