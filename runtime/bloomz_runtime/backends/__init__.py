"""Device backends behind one interface (``Backend.load`` -> ``ModelRunner``).

Device libraries (habana_frameworks, optimum-habana, CUDA DeepSpeed) are imported lazily
inside the backends, so the CPU image and the tests never need them.
"""

from __future__ import annotations

from bloomz_runtime.backends.base import Backend, ModelRunner


def get_backend(device: str) -> Backend:
    if device == "cpu":
        from bloomz_runtime.backends.cpu import CpuBackend

        return CpuBackend()
    if device == "cuda":
        from bloomz_runtime.backends.cuda import CudaBackend

        return CudaBackend()
    if device == "hpu":
        from bloomz_runtime.backends.hpu import HpuBackend

        return HpuBackend()
    raise ValueError(f"unknown device {device!r}")


__all__ = ["Backend", "ModelRunner", "get_backend"]
