"""Pod IPs for the sandbox: one loopback address per pod (127.0.0.X), so every pod can bind the
same ports (gRPC 50051, metrics 9090) like pods on a real cluster network do.

Several sandboxes may run on one machine (a demo next to the end-to-end test): an address is
reserved machine-wide with an flock on a file per address, held while the pod lives and released
by the kernel if the runner dies. A port check on top skips addresses something else listens on.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "bloomz-sandbox-addresses"


def ports_free(address: str, ports: Iterable[int]) -> bool:
    """Whether a server could bind every port on `address` now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def port_listening(address: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((address, port)) == 0


class LoopbackAddresses:
    """Hands out 127.0.0.2, 127.0.0.3, ... round-robin (a freed address is reused last), skipping any
    reserved by another sandbox or whose ports are taken."""

    def __init__(self, first: str = "127.0.0.2", count: int = 250, lock_dir: Path = DEFAULT_LOCK_DIR) -> None:
        start = ipaddress.IPv4Address(first)
        self._candidates = [str(start + offset) for offset in range(count)]
        self._next = 0
        self._held: dict[str, int] = {}  # address -> file descriptor holding its lock
        self._lock_dir = lock_dir
        self._lock = threading.Lock()

    def _reserve(self, address: str) -> int | None:
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._lock_dir / f"{address}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            return None
        return descriptor

    def allocate(self, ports: Iterable[int]) -> str:
        wanted = list(ports)
        with self._lock:
            for step in range(len(self._candidates)):
                index = (self._next + step) % len(self._candidates)
                address = self._candidates[index]
                if address in self._held:
                    continue
                descriptor = self._reserve(address)
                if descriptor is None:
                    continue
                if not ports_free(address, wanted):
                    os.close(descriptor)
                    continue
                self._held[address] = descriptor
                self._next = index + 1
                return address
        raise RuntimeError(f"no loopback address with ports {wanted} free")

    def release(self, address: str) -> None:
        with self._lock:
            descriptor = self._held.pop(address, None)
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)  # closing the descriptor drops the flock

    @property
    def in_use(self) -> set[str]:
        with self._lock:
            return set(self._held)
