"""Two ranks under mpirun (DeepSpeed AutoTP over gloo): same greedy output as plain transformers,
lockstep under concurrent load, and a killed rank takes the whole job down."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_runtime.dist import SHM_DIR, deepspeed_shm_prefix
from helpers import free_port, start_runtime, stop_runtime, wait_for_serving
from helpers import greedy_request as greedy
from runtime_reference import PROMPTS, Reference

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc, no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def serve_ranks(launcher_pid: int) -> list[int]:
    """The serve processes under launcher -> mpirun."""
    ranks = []
    for mpirun in children(launcher_pid):
        for pid in children(mpirun):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"bloomz_runtime.serve" in cmdline:
                ranks.append(pid)
    return ranks


def job_shm_segments(master_port: int) -> list[Path]:
    """DeepSpeed's shared-memory all-reduce segments of the job on this MASTER_PORT."""
    prefix = deepspeed_shm_prefix(os.getuid(), "127.0.0.1", str(master_port))
    return sorted(SHM_DIR.glob(f"{prefix}*"))


def test_two_ranks_match_transformers_and_die_together(tiny_checkpoint: Path, hf_greedy: Reference) -> None:
    master_port = free_port()
    rt = start_runtime(tiny_checkpoint, world_size=2, env={"MASTER_PORT": str(master_port)})
    try:
        wait_for_serving(rt.target, 300, rt.process)
        # DeepSpeed's per-rank segments are unlinked as soon as every rank has mapped them.
        assert job_shm_segments(master_port) == []
        with grpc.insecure_channel(rt.target) as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            for prompt in PROMPTS:
                assert list(stub.Generate(greedy(prompt, 16), timeout=120).token_ids) == hf_greedy(prompt, 16)
            # Rows joining and leaving while both ranks stay in lockstep.
            jobs = [(PROMPTS[i % len(PROMPTS)], 4 + 3 * i) for i in range(6)]
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(stub.Generate, greedy(p, n), timeout=300) for p, n in jobs]
                for (p, n), fut in zip(jobs, futures, strict=True):
                    assert list(fut.result().token_ids) == hf_greedy(p, n)
            streamed = list(stub.GenerateStream(greedy(PROMPTS[0], 8), timeout=120))
            assert [t for m in streamed for t in m.token_ids] == hf_greedy(PROMPTS[0], 8)
            info = stub.Info(pb.InfoRequest(), timeout=30)
            assert info.world_size == 2 and info.backend == "cpu-autotp"
            # The sharded lm_head is read whole (no screen); the untied input embedding one row at a time.
            config = json.loads((tiny_checkpoint / "config.json").read_text())
            assert info.greedy_head == "full" and not config["tie_word_embeddings"]
            embedding_bytes = config["vocab_size"] * config["hidden_size"] * 4
            assert info.decode_weight_bytes == info.parameters * 4 - embedding_bytes
            bench = stub.Benchmark(pb.BenchmarkRequest(max_new_tokens=8, warmup=0, iterations=1), timeout=120)
            assert bench.world_size == 2 and bench.latency_seconds > 0

        ranks = serve_ranks(rt.process.pid)
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGKILL)  # the rank started last: usually not rank 0
        code = rt.process.wait(timeout=120)  # the job ends (TimeoutExpired if it hangs)
        assert code != 0
        assert job_shm_segments(master_port) == []
        time.sleep(0.5)
        for pid in ranks:
            assert (
                not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
    finally:
        stop_runtime(rt)
