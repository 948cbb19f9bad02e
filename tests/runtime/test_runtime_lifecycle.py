"""Start-up and shutdown as Kubernetes sees them: health NOT_SERVING -> SERVING -> NOT_SERVING,
SIGTERM drains in-flight work (finished, not cut) and refuses new work, then exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2
from helpers import health_status, start_runtime, stop_runtime

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("world_size", [1, 2])
def test_health_and_graceful_drain(tiny_checkpoint: Path, world_size: int) -> None:
    rt = start_runtime(tiny_checkpoint, world_size=world_size, extra_args=["--grace-period-s", "120"])
    try:
        seen: list[int | None] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and rt.process.poll() is None:
            status = health_status(rt.target, "bloomz.v1.TextGeneration", timeout=2.0)
            if status is not None and (not seen or seen[-1] != status):
                seen.append(status)
            if status == SERVING:
                break
            time.sleep(0.02)
        assert seen[-2:] == [NOT_SERVING, SERVING], seen
        assert health_status(rt.target) == SERVING

        with grpc.insecure_channel(rt.target) as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            assert stub.Generate(
                pb.GenerateRequest(prompt="hi", parameters=pb.GenerationParameters(max_new_tokens=2)),
                timeout=60,
            ).generated_tokens in (1, 2)

            long_request = pb.GenerateRequest(
                prompt="DeepSpeed is", parameters=pb.GenerationParameters(max_new_tokens=200, ignore_eos=True)
            )
            stream = stub.GenerateStream(long_request, timeout=300)
            first = next(stream)  # in flight now
            result: dict[str, object] = {}

            def finish_stream() -> None:
                try:
                    result["messages"] = [first, *stream]
                except grpc.RpcError as exc:
                    result["error"] = exc

            reader = threading.Thread(target=finish_stream)
            reader.start()
            rt.process.send_signal(signal.SIGTERM)

            deadline = time.monotonic() + 60
            while health_status(rt.target, timeout=2.0) == SERVING and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health_status(rt.target, "bloomz.v1.TextGeneration", timeout=2.0) in (NOT_SERVING, None)
            refused: grpc.StatusCode | None = None
            try:
                stub.Generate(pb.GenerateRequest(prompt="late"), timeout=30)
            except grpc.RpcError as exc:
                refused = exc.code()
            # The 200-token stream keeps the server draining for a while: new work is refused.
            assert refused == grpc.StatusCode.UNAVAILABLE

            reader.join(timeout=300)
            assert "error" not in result, result.get("error")
            messages = result["messages"]
            assert isinstance(messages, list)
            assert sum(len(m.token_ids) for m in messages) == 200
            assert messages[-1].finish_reason == pb.FINISH_REASON_LENGTH

        assert rt.process.wait(timeout=120) == 0
    finally:
        stop_runtime(rt)
