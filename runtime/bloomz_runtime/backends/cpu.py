"""CPU backend: plain transformers for one rank, DeepSpeed AutoTP over gloo for several."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from bloomz_api.options import ServeOptions

from bloomz_runtime.backends.base import ModelRunner, count_parameters, torch_dtype
from bloomz_runtime.backends.bloom import BloomRunner, supports_lean_forward
from bloomz_runtime.backends.greedy_head import (
    ScreenedGreedyHead,
    can_screen,
    cap_onednn_isa,
    screen_pays_off,
)
from bloomz_runtime.backends.loading import checkpoint_files, model_dir_for
from bloomz_runtime.backends.screen_store import ScreenSource
from bloomz_runtime.backends.sharded_head import ShardedScreenedGreedyHead, deepspeed_lm_head_shard
from bloomz_runtime.dist import DistContext, unlink_own_shm_segment
from bloomz_runtime.multinode import avoid_shared_memory_all_reduce_across_nodes
from bloomz_runtime.shm_op import load_shm_op

# Rows a running batch usually holds; oneDNN picks its weight layout for this many (any count works).
PACKED_BATCH_HINT = 16
# Below these sizes the float32 matrices stay in cache and MKL is fast at any batch: a prepacked
# oneDNN call costs more per call (256-wide layers: 30 against 11 us at batch 1) and the int8
# screen's extra small ops more than the whole head (a 1024 x 256 head: 280 against 30 us).
PACK_MIN_ELEMENTS = 2**20
SCREEN_MIN_ELEMENTS = 2**22
# Up to this many rows MKL's gemv on the plain [out, in] weight beats the packed call (560m body
# linears, 2 cores: 42 against 48 ms at 1 row, 45 against 50 at 2); from 4 rows on it is 1.6-1.9x
# slower than the packed one. Keeping both costs one more float32 copy of every packed matrix.
PLAIN_MAX_ROWS = 2


def uses_plain_kernel(rows: int) -> bool:
    """Whether a call of ``rows`` input rows goes to MKL on the plain weight (when it is kept)."""
    return rows <= PLAIN_MAX_ROWS


def can_pack_linears(dtype: torch.dtype) -> bool:
    """oneDNN's prepacked float32 matmul is in every x86 torch build we ship (private ops, so check)."""
    mkldnn_ops = torch.ops.mkldnn
    return (
        dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(mkldnn_ops, "_reorder_linear_weight")
        and hasattr(mkldnn_ops, "_linear_pointwise")
    )


def _linear_pointwise(*args: Any) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(*args)


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight reordered once into oneDNN's blocked layout.

    MKL's sgemm on a plain [out, in] weight is slow for a decode batch of a few rows (16 rows cost
    2.2x one row, 15 rows 5x; profile of 16 concurrent clients: 87 % of a step in these matmuls);
    oneDNN on a prepacked weight costs 0.65x of MKL's time for 16 rows but 1.1x for one or two.
    With ``keep_plain`` the plain weight stays too and calls of up to PLAIN_MAX_ROWS rows use it
    (then they equal ``F.linear`` exactly); packed results equal it up to float32 rounding.
    """

    def __init__(
        self, linear: torch.nn.Linear, batch_hint: int = PACKED_BATCH_HINT, keep_plain: bool = True
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.weight = linear.weight if keep_plain else None
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and uses_plain_kernel(x.numel() // self.in_features):
            return F.linear(x, self.weight, self.bias)
        return _linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def pack_linears(
    model: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = (), min_elements: int | None = None
) -> int:
    """Replace every plain ``nn.Linear`` (not subclasses such as DeepSpeed's sharded ones, not
    ``skip``) of at least ``min_elements`` weights (default PACK_MIN_ELEMENTS) in place."""
    least = PACK_MIN_ELEMENTS if min_elements is None else min_elements
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
        and not any(child is s for s in skip)
        and child.weight.numel() >= least
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)


class CpuBackend:
    name = "cpu"

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        dtype = torch_dtype(opts.torch_dtype_name)
        wanted = screen_pays_off() if opts.screened_greedy is None else opts.screened_greedy
        screening = wanted and dtype == torch.float32
        if screening:
            cap_onednn_isa()  # before the first oneDNN kernel of this process (the packing below)
        model_dir = model_dir_for(opts, ctx)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, low_cpu_mem_usage=True)
        model.eval()
        parameters = count_parameters(model)
        versions = {"torch": str(torch.__version__)}
        if ctx.world_size > 1:
            import deepspeed

            load_shm_op()  # under a lock of ours, never stuck on a baton a killed build left
            # AutoTP: DeepSpeed splits the linear layers across ranks and all-reduces their outputs;
            # the HF modules (and so the KV cache layout the engine relies on) stay as they are.
            engine = deepspeed.init_inference(
                model,
                tensor_parallel={"tp_size": ctx.world_size},
                dtype=dtype,
                replace_with_kernel_inject=False,
            )
            model = engine.module
            versions["deepspeed"] = str(deepspeed.__version__)
            # Ranks on several nodes (a multi-node group): not DeepSpeed's single-machine all-reduce.
            avoid_shared_memory_all_reduce_across_nodes()
            # Every rank has opened every shared-memory segment once all are past set-up: the names
            # can go now, so a killed job leaves nothing in /dev/shm.
            torch.distributed.barrier()
            unlink_own_shm_segment()
        sharded_head = None
        if screening and ctx.world_size > 1 and can_screen() and supports_lean_forward(model):
            shard = deepspeed_lm_head_shard(model.lm_head)
            if shard is not None:
                # Every rank builds its part now: the ranks must switch to it at the same step.
                sharded_head = ShardedScreenedGreedyHead(shard[0], shard[1], ctx.world_size, shard[2])
        screen = None
        # "auto" screens only a head large enough to pay for it; --screened-greedy forces it.
        if (
            screening
            and ctx.world_size == 1
            and can_screen_lm_head(model, dtype)
            and (opts.screened_greedy or model.lm_head.weight.numel() >= SCREEN_MIN_ELEMENTS)
        ):
            # Greedy steps read an int8 copy of the lm_head (exact argmax, greedy_head.py); the
            # float32 one stays as it is for sampling steps, so it is not packed again.
            screen = ScreenSource(model.lm_head.weight.detach(), checkpoint_files(model_dir), model_dir)
        if ctx.world_size == 1 and can_pack_linears(dtype):
            # A packed tied lm_head is its own copy (the embedding lookup keeps the original):
            # one vocabulary-sized matrix more memory for 0.65x the lm_head time at batch 16.
            pack_linears(model, skip=(model.lm_head,) if screen is not None else ())
        runner_class = BloomRunner if supports_lean_forward(model) else ModelRunner
        runner = runner_class(
            model=model,
            tokenizer=tokenizer,
            device=torch.device("cpu"),
            dtype=dtype,
            backend="cpu-autotp" if ctx.world_size > 1 else "cpu",
            parameters=parameters,
            versions=versions,
        )
        if isinstance(runner, BloomRunner):
            runner.configure_static_decode(opts)
            runner.greedy_head = sharded_head
            if screen is not None:
                attach_screen(runner, screen)
        return runner


def attach_screen(runner: BloomRunner, screen: ScreenSource) -> None:
    """The stored screen now, or one built in the background (the float32 head serves meanwhile)."""
    head = screen.stored()
    if head is not None:
        runner.greedy_head = head
        return

    def ready(built: ScreenedGreedyHead) -> None:
        runner.greedy_head = built  # one attribute store: a step sees the old head or the new one

    runner.screen_builder = screen.build_in_background(ready)


def can_screen_lm_head(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    head = getattr(model, "lm_head", None)
    return (
        dtype == torch.float32
        and supports_lean_forward(model)
        and type(head) is torch.nn.Linear
        and head.bias is None
        and can_screen()
    )
