"""Ways to run one static decode step (``static.StepFn``) as a captured graph, one per bucket pair.

Each factory takes the step (a closure over the model and the preallocated cache) and its
(batch bucket, length bucket) key, and returns a callable with the same signature:

- ``cuda_graphs``: ``torch.cuda.CUDAGraph`` captured once per key, replayed with the new ids and
  positions copied into its static input tensors (PyTorch's documented whole-network capture);
- ``hpu_graphs``: Habana's ``wrap_in_hpu_graph`` over a module around the step (its cache keys
  graphs by input shapes, which here are the bucket pair);
- ``compiled``: ``torch.compile(fullgraph=True, dynamic=False)``, the check on CPU that the step
  has the property graphs need: it compiles once per bucket pair, never per position or row change.

Device libraries are imported only inside the factories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bloomz_runtime.backends.static import StepFn

GraphFactory = Callable[[StepFn, tuple[int, int]], StepFn]


def compiled(backend: str | Callable[..., Any] = "inductor") -> GraphFactory:
    def factory(step: StepFn, key: tuple[int, int]) -> StepFn:
        return torch.compile(step, fullgraph=True, dynamic=False, backend=backend)

    return factory


def cuda_graphs(device: torch.device, scratch_position: int) -> GraphFactory:
    """``scratch_position``: a cache position no live row has written yet (the warm-up run, which
    really executes, writes its keys there)."""
    pool = torch.cuda.graph_pool_handle()

    def factory(step: StepFn, key: tuple[int, int]) -> StepFn:
        batch, length = key
        ids = torch.zeros(batch, dtype=torch.long, device=device)
        pos = torch.full((batch,), scratch_position, dtype=torch.long, device=device)
        key_pos = torch.arange(length, device=device)
        # Warm up on a side stream first (lazy cuBLAS/allocator set-up must not be captured).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(ids, pos, key_pos)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = step(ids, pos, key_pos)

        def replay(
            new_ids: torch.Tensor, new_pos: torch.Tensor, new_key_pos: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            ids.copy_(new_ids)
            pos.copy_(new_pos)
            graph.replay()
            return outputs

        return replay

    return factory


class _StepModule(torch.nn.Module):
    """``wrap_in_hpu_graph`` wraps modules; the cache is state of the closure, not an input, so the
    graph's in-place writes land in it (inputs are copied into the graph's own tensors)."""

    def __init__(self, step: StepFn) -> None:
        super().__init__()
        self.step = step

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, key_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(ids, pos, key_pos)


def hpu_graphs() -> GraphFactory:
    def factory(step: StepFn, key: tuple[int, int]) -> StepFn:
        from habana_frameworks.torch.hpu import wrap_in_hpu_graph

        module = wrap_in_hpu_graph(_StepModule(step))
        return module

    return factory
