"""Static decode (--static-decode) in real runtimes: 1 rank and 2 ranks under mpirun (DeepSpeed
AutoTP over gloo) give plain transformers' greedy tokens, alone and with rows joining and leaving."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from helpers import free_port, start_runtime, stop_runtime, wait_for_serving
from runtime_reference import PROMPTS, Reference

pytestmark = pytest.mark.slow


def request(prompt: str, n: int, **sampling: object) -> pb.GenerateRequest:
    params = pb.GenerationParameters(max_new_tokens=n, ignore_eos=True, **sampling)
    return pb.GenerateRequest(prompt=prompt, parameters=params)


@pytest.mark.parametrize("world_size", [1, 2])
def test_static_decode_matches_transformers(
    tiny_checkpoint: Path, hf_greedy: Reference, world_size: int
) -> None:
    # Small token limits keep the preallocated cache small; 4 slots, so 6 jobs queue and join later.
    args = ["--static-decode", "--max-batch-size", "4", "--max-input-tokens", "64", "--max-new-tokens", "40"]
    rt = start_runtime(
        tiny_checkpoint, world_size=world_size, extra_args=args, env={"MASTER_PORT": str(free_port())}
    )
    try:
        wait_for_serving(rt.target, 300, rt.process)
        with grpc.insecure_channel(rt.target) as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            assert list(stub.Generate(request(PROMPTS[0], 30), timeout=120).token_ids) == hf_greedy(
                PROMPTS[0], 30
            )
            jobs = [(PROMPTS[i % len(PROMPTS)], 4 + 6 * i) for i in range(6)]
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(stub.Generate, request(p, n), timeout=300) for p, n in jobs]
                for (p, n), fut in zip(jobs, futures, strict=True):
                    assert list(fut.result().token_ids) == hf_greedy(p, n)
            # A sampled row beside a greedy one: logits of that step stay where they were computed.
            sampled = [
                stub.Generate(
                    request(PROMPTS[1], 8, do_sample=True, seed=5, top_k=20, top_p=0.9), timeout=120
                )
                for _ in range(2)
            ]
            assert list(sampled[0].token_ids) == list(sampled[1].token_ids)
            assert len(sampled[0].token_ids) == 8
    finally:
        assert stop_runtime(rt) == 0
