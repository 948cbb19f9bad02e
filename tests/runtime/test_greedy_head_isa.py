"""The int8 screen runs on oneDNN's AVX-512 VNNI kernel in a real runtime process: the ISA cap reaches
oneDNN before its first kernel, and by default only AVX-512 CPUs screen. (Kept apart from the unit tests
of the screen: each case starts a process, too slow for their mutation run.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bloomz_runtime.backends.greedy_head import ONEDNN_ISA_ENV, screen_pays_off


@pytest.mark.parametrize(
    ("capability", "forced"),
    [(None, None), ("avx2", None), ("avx2", True)],
    ids=["this-cpu-auto", "as-if-avx2-auto", "as-if-avx2-forced"],
)
def test_a_screening_cpu_process_runs_the_int8_head_on_the_vnni_kernel(
    tiny_checkpoint: Path, capability: str | None, forced: bool | None
) -> None:
    """The cap must reach oneDNN before its first kernel: load the backend in a fresh process and
    read oneDNN's own log of the kernels it ran. By default ("auto") only AVX-512 CPUs screen."""
    script = (
        "import torch\n"
        "from bloomz_runtime.backends import cpu\n"
        "from bloomz_runtime.backends.cpu import CpuBackend\n"
        "cpu.SCREEN_MIN_ELEMENTS = 0\n"  # "auto" leaves the tiny model's head unscreened otherwise
        "from bloomz_runtime.backends.greedy_head import screen_pays_off\n"
        "from bloomz_runtime.dist import DistContext\n"
        "from bloomz_api.options import ServeOptions\n"
        f"opts = ServeOptions(model={str(tiny_checkpoint)!r}, device='cpu', screened_greedy={forced})\n"
        "runner = CpuBackend().load(opts, DistContext(0, 1, 0))\n"
        "if runner.screen_builder is not None:  # no stored screen yet: built in the background\n"
        "    runner.screen_builder.join(timeout=120)\n"
        f"expected = {forced} if {forced} is not None else screen_pays_off()\n"
        "assert (runner.greedy_head is not None) == expected, (runner.greedy_head, expected)\n"
        "if runner.greedy_head is not None:\n"
        "    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):\n"
        "        g = torch.Generator().manual_seed(0)\n"
        "        hidden = torch.randn(1, runner.greedy_head.hidden_size, generator=g)\n"
        "        runner.greedy_head.argmax(hidden)\n"
        "print('screening', runner.greedy_head is not None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ONEDNN_ISA_ENV, "DNNL_MAX_CPU_ISA")}
    if capability:  # ATen's kernels as on a CPU without AVX-512: "auto" must not screen there
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if "screening False" in done.stdout:
        assert (capability == "avx2" and forced is None) or not screen_pays_off()
        return
    int8_runs = [line for line in done.stdout.splitlines() if ",exec," in line and "wei:s8" in line]
    assert int8_runs, done.stdout[-2000:]
    assert not [line for line in int8_runs if "amx" in line], int8_runs
