"""Back-pressure: a full queue answers RESOURCE_EXHAUSTED and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from helpers import metric, run_runtime, wait_for

pytestmark = pytest.mark.slow


def long_request(n: int = 400) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt="DeepSpeed is", parameters=pb.GenerationParameters(max_new_tokens=n, ignore_eos=True)
    )


def test_full_queue_is_resource_exhausted(tiny_checkpoint: Path) -> None:
    args = ["--max-batch-size", "1", "--max-queue-size", "1", "--max-new-tokens", "400"]
    with run_runtime(tiny_checkpoint, extra_args=args) as rt, grpc.insecure_channel(rt.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        running = stub.GenerateStream(long_request(), timeout=300)
        next(running)  # occupies the only batch slot
        waiting = stub.Generate.future(long_request(5), timeout=300)
        # Wait until the second request sits in the queue (the server reports the depth).
        wait_for("the second request in the queue", lambda: metric(rt, "bloomz_waiting_requests") >= 1)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Generate(long_request(1), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in (refused.value.details() or "")
        running.cancel()
        assert waiting.result().generated_tokens == 5
        assert stub.Generate(long_request(2), timeout=60).generated_tokens == 2
