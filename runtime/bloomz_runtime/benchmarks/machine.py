"""What the numbers were measured on: CPU model, cores, memory, load, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def _cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib(meminfo: str) -> float:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def describe_machine(cpuinfo: str, meminfo: str, cores: int) -> str:
    """One line, e.g. 'Intel Xeon ... x 2 cores, 23.5 GiB' (pure, so it is unit-tested)."""
    return f"{_cpu_model(cpuinfo)} x {cores} cores, {_memory_gib(meminfo):.1f} GiB"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, object]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "description": describe_machine(_read("/proc/cpuinfo"), _read("/proc/meminfo"), cores),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "last_level_cache_bytes": last_level_cache_bytes(),
    }


def parse_cache_size(text: str) -> int:
    """sysfs cache sizes such as '307200K' or '32M' in bytes (0 when unreadable)."""
    text = text.strip().upper()
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    try:
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        return 0


def last_level_cache_bytes() -> int:
    """The largest CPU cache: weights smaller than it are not read from DRAM at every token."""
    sizes = [
        parse_cache_size(path.read_text())
        for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")
    ]
    return max(sizes, default=0)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def versions(names: tuple[str, ...] = ("torch", "transformers", "deepspeed", "grpcio")) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
