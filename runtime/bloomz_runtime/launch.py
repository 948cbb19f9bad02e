"""What a runtime pod runs: start the ranks (mpirun for more than one) and mirror their fate.

    python3 -m bloomz_runtime.launch --model PATH_OR_HUB_ID --device {hpu,cuda,cpu} --world-size N ...

``plan_job`` (the job as data, ``mpijob.MpiJob``) and ``build_command`` (its argv) are pure and
unit-tested; ``main`` adds the side effects: this node's CPU topology and Open MPI version, a free
MASTER_PORT, signal forwarding (SIGTERM goes to rank 0, which drains and then shuts the other ranks
down), and the child's exit code as ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bloomz_api.options import BIND_HOST_ENV, ServeOptions, parse_options, to_argv

from bloomz_runtime.dist import SHM_DIR, deepspeed_shm_prefix, hpu_environment
from bloomz_runtime.lifetime import preexec_die_with_parent
from bloomz_runtime.mpijob import DEFAULT_MPI_MAJOR, MpiJob, detect_mpi_major, device_binding, render
from bloomz_runtime.multinode import ROLE_LEADER, ROLE_WORKER, prepare_leader, run_worker, split_args
from bloomz_runtime.topology import CpuTopology, current_topology

SERVE_MODULE = "bloomz_runtime.serve"
# Rank 0 writes its pid here so the launcher can ask it (and only it) to drain.
LEADER_PIDFILE_ENV = "BLOOMZ_LEADER_PIDFILE"
# Environment every rank needs; Open MPI forwards these by name (-x) to every node.
FORWARDED_ENV_PREFIXES = (
    "BLOOMZ_",
    "HF_",
    "HUGGING_FACE_",
    "TRANSFORMERS_",
    "HABANA_",
    "PT_HPU_",
    "NCCL_",
    "CUDA_",
    "TORCH_",
    "MASTER_",
    "OMP_",
    "KMP_",
    "MKL_",
)
FORWARDED_ENV_NAMES = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "HOME", "TMPDIR")
# After the grace period, how long rank 0 may take to stop the other ranks before we kill the job.
KILL_MARGIN_S = 15.0


def threads_per_rank(cpu_count: int, world_size: int) -> int:
    return max(1, cpu_count // world_size)


def forwarded_env_names(environ: Mapping[str, str]) -> list[str]:
    names = {k for k in environ if k.startswith(FORWARDED_ENV_PREFIXES) or k in FORWARDED_ENV_NAMES}
    return sorted(names)


def rank_environment(
    opts: ServeOptions, environ: Mapping[str, str], *, master_port: int, cpu_count: int, pidfile: str | None
) -> dict[str, str]:
    """The environment the ranks start with (the launcher's plus what they must agree on)."""
    env = dict(environ)
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env["MASTER_PORT"] = environ.get("MASTER_PORT", str(master_port))
    env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(cpu_count, opts.world_size)))
    env[BIND_HOST_ENV] = opts.bind_host
    if opts.device == "hpu":
        # Before any rank's first habana_frameworks import, which may come with `import torch`.
        hpu_environment(opts.world_size, env)
    # Output of every rank reaches the pod log at once.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if pidfile:
        env[LEADER_PIDFILE_ENV] = pidfile
    return env


def serve_program(opts: ServeOptions, python: str = sys.executable) -> tuple[str, ...]:
    """What every rank runs."""
    return (python, "-u", "-m", SERVE_MODULE, *to_argv(opts))


def plan_job(
    opts: ServeOptions,
    env: Mapping[str, str],
    *,
    python: str = sys.executable,
    is_root: bool = False,
    topology: CpuTopology | None = None,
    ranks_per_node: int | None = None,
    mpi_major: int = DEFAULT_MPI_MAJOR,
    mpirun: str = "mpirun",
) -> MpiJob:
    """The job on this node (a multi-node leader adds its hosts, see multinode.prepare_leader).
    `topology`: this node's CPUs (placement on hpu); `ranks_per_node`: the ranks that share them."""
    per_node = ranks_per_node or opts.world_size
    return MpiJob(
        program=serve_program(opts, python),
        world_size=opts.world_size,
        binding=device_binding(opts.device, topology, per_node),
        forwarded_env=tuple(forwarded_env_names(env)),
        allow_run_as_root=is_root,
        mpi_major=mpi_major,
        mpirun=mpirun,
    )


def build_command(opts: ServeOptions, env: Mapping[str, str], **job: Any) -> list[str]:
    """The command line that starts all ranks on this node: serve directly for one rank, mpirun otherwise."""
    return render(plan_job(opts, env, **job))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def remove_deepspeed_shm(
    env: Mapping[str, str], shm_dir: Path = SHM_DIR, uid: int | None = None
) -> list[Path]:
    """Unlink whatever is left of the job's all-reduce segments once its ranks are gone (the ranks
    unlink their own names after set-up; this covers ranks that died before that).

    DeepSpeed never unlinks them (69 MB per rank); in a pod, /dev/shm is memory that outlives a
    container restart, so every crashed or restarted job would keep its share until the pod goes.
    Only this job's names (its MASTER_ADDR and MASTER_PORT): other jobs may share the directory.
    """
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return []
    prefix = deepspeed_shm_prefix(os.getuid() if uid is None else uid, env["MASTER_ADDR"], env["MASTER_PORT"])
    removed = []
    with contextlib.suppress(OSError):
        for path in shm_dir.iterdir():
            if path.name.startswith(prefix) and path.name[len(prefix) :].isdigit():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def exit_code(returncode: int) -> int:
    """A child killed by signal N exits like a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class _Supervisor:
    """Runs the job, turns our SIGTERM/SIGINT into a drain request to rank 0, escalates if ignored."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], pidfile: Path | None, grace_s: float) -> None:
        self.pidfile = pidfile
        self.grace_s = grace_s
        self.kill_at: float | None = None
        self.signals = 0
        # Own process group: a Ctrl-C in a terminal reaches only us, and we decide what the ranks get.
        # It dies with us even when we are SIGKILLed (no handler of ours runs then).
        self.proc = subprocess.Popen(
            list(cmd), env=env, start_new_session=True, preexec_fn=preexec_die_with_parent()
        )

    def _leader_pid(self) -> int | None:
        if self.pidfile is None:
            return self.proc.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        leader = self._leader_pid()
        if self.signals == 1 and leader is not None:
            self._kill(leader, signal.SIGTERM)
            self.kill_at = time.monotonic() + self.grace_s + KILL_MARGIN_S
        else:
            # Second signal, or ranks still starting: stop the whole job now.
            self._kill_group(signal.SIGTERM)
            self.kill_at = time.monotonic() + 5.0

    def _kill(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _kill_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait(self) -> int:
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self.kill_at is not None and time.monotonic() > self.kill_at:
                    self._kill_group(signal.SIGKILL)
                    self.kill_at = None


def _topology(device: str) -> CpuTopology | None:
    """This node's CPUs where placement uses them (hpu); None where they cannot be read."""
    if device != "hpu":
        return None
    try:
        return current_topology()
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        print(f"launch: CPU topology unknown ({error}); ranks are not bound", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    # Multi-node replicas: a worker becomes sshd; a leader runs mpirun over its group (multinode.py).
    group, argv = split_args(sys.argv[1:] if argv is None else argv)
    if group.role == ROLE_WORKER:
        return run_worker(group)
    opts = parse_options(argv)
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    leader = group.role == ROLE_LEADER
    with tempfile.TemporaryDirectory(prefix="bloomz-launch-") as tmp:
        pidfile = Path(tmp) / "leader.pid" if opts.world_size > 1 else None
        env = rank_environment(
            opts,
            os.environ,
            master_port=free_port(),
            cpu_count=cpu_count,
            pidfile=str(pidfile) if pidfile else None,
        )
        job = plan_job(
            opts,
            env,
            is_root=os.geteuid() == 0,
            topology=_topology(opts.device),
            ranks_per_node=group.slots_per_host if leader else None,
            mpi_major=detect_mpi_major() if opts.world_size > 1 else DEFAULT_MPI_MAJOR,
        )
        if leader:
            job = prepare_leader(group, job, env, Path(tmp))
        cmd = render(job)
        print("launch:", " ".join(cmd), file=sys.stderr, flush=True)
        supervisor = _Supervisor(cmd, env, pidfile, opts.grace_period_s)
        signal.signal(signal.SIGTERM, supervisor.on_signal)
        signal.signal(signal.SIGINT, supervisor.on_signal)
        try:
            return exit_code(supervisor.wait())
        finally:
            if opts.world_size > 1:
                remove_deepspeed_shm(env)


if __name__ == "__main__":
    sys.exit(main())
