"""A two-"node" group on one machine: the leader's launcher (--role leader) waits for its worker, runs mpirun
with the group's hostfile and SSH options, serves gRPC from rank 0, and generates exactly what a single
process does. The worker "node" is 127.0.0.2: a socket stands in for its sshd port, and Open MPI's rsh agent
is a local stand-in for ssh (tests/runtime/local_rsh_agent.py), so the only simulated step is the SSH hop.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from helpers import start_runtime, stop_runtime, wait_for, wait_for_serving
from runtime_reference import PROMPTS, Reference

pytestmark = pytest.mark.slow

AGENT = Path(__file__).with_name("local_rsh_agent.py")
WORKER_ADDRESS = "127.0.0.2"


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker` (every rank gets it through mpirun's -x forwarding)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(entry))
    return found


def rank_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_two_node_group_serves_from_the_leader_and_equals_single_node_greedy(
    tiny_checkpoint: Path, hf_greedy: Reference, tmp_path: Path
) -> None:
    keys = tmp_path / "ssh"
    keys.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True
    )
    agent_log = tmp_path / "agent.jsonl"
    marker = f"BLOOMZ_TEST_GROUP={uuid.uuid4().hex}"
    with socket.socket() as worker_sshd:
        worker_sshd.bind((WORKER_ADDRESS, 0))
        worker_sshd.listen()
        ssh_port = worker_sshd.getsockname()[1]
        extra = [
            "--role", "leader",
            "--hosts", f"127.0.0.1,{WORKER_ADDRESS}",
            "--slots-per-host", "1",
            "--ssh-port", str(ssh_port),
            "--ssh-dir", str(keys),
            "--workers-timeout-s", "120",
        ]  # fmt: skip
        env = {
            "OMPI_MCA_plm_rsh_agent": f"{sys.executable} {AGENT}",
            "LOCAL_RSH_AGENT_LOG": str(agent_log),
            marker.split("=")[0]: marker.split("=")[1],
        }
        rt = start_runtime(tiny_checkpoint, world_size=2, extra_args=extra, env=env)
        try:
            try:
                wait_for_serving(rt.target, 300, rt.process)
            except Exception as error:
                raise AssertionError(f"{error}\n--- leader log ---\n{rt.log()[-5000:]}") from error
            with grpc.insecure_channel(rt.target) as channel:
                stub = pb_grpc.TextGenerationStub(channel)
                for prompt in PROMPTS:
                    request = pb.GenerateRequest(
                        prompt=prompt, parameters=pb.GenerationParameters(max_new_tokens=12, ignore_eos=True)
                    )
                    assert list(stub.Generate(request, timeout=120).token_ids) == hf_greedy(prompt, 12)
                assert stub.Info(pb.InfoRequest(), timeout=30).world_size == 2

            # mpirun reached the worker exactly once, through the SSH options the pods use.
            (call,) = [json.loads(line) for line in agent_log.read_text().splitlines()]
            assert call["host"] == WORKER_ADDRESS and "orted" in call["command"]
            options = call["options"]
            assert options[:4] == ["-i", f"{keys}/id_ed25519", "-p", str(ssh_port)]
            assert "StrictHostKeyChecking=yes" in options and "BatchMode=yes" in options

            # Two ranks, one per "node", both pointed at the leader's rendezvous.
            ranks = {}
            for pid in processes_with(marker):
                environ = rank_environ(pid)
                if (
                    "OMPI_COMM_WORLD_RANK" in environ
                    and b"bloomz_runtime.serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
                ):
                    ranks[environ["OMPI_COMM_WORLD_RANK"]] = environ
            assert sorted(ranks) == ["0", "1"]
            for environ in ranks.values():
                assert environ["MASTER_ADDR"] == "127.0.0.1"
                assert environ["OMPI_COMM_WORLD_LOCAL_SIZE"] == "1"  # each node runs its own rank
        finally:
            code = stop_runtime(rt)
            log = rt.log()
    assert code == 0, log[-5000:]
    # Nothing of the group outlives the leader: no rank and no orted left on the worker "node".
    wait_for("no process of the group left", lambda: processes_with(marker) == [], 60, 0.5)
