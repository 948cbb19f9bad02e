"""CUDA backend: transformers on one GPU, DeepSpeed-inference tensor parallelism on several.

Written against transformers' and DeepSpeed's documented APIs; imported only when --device cuda.
"""

from __future__ import annotations

from typing import Any

import torch
from bloomz_api.options import ServeOptions

from bloomz_runtime.backends.base import ModelRunner, count_parameters, torch_dtype
from bloomz_runtime.backends.bloom import BloomRunner, supports_lean_forward
from bloomz_runtime.backends.capture import GraphFactory, cuda_graphs
from bloomz_runtime.backends.loading import (
    ds_inference_kwargs,
    load_for_deepspeed,
    model_dir_for,
)
from bloomz_runtime.backends.static import SlotShape
from bloomz_runtime.dist import DistContext

# Attention reads the cache up to a multiple of this many positions: one CUDA graph per batch
# bucket covers 128 tokens (a 7B1 step reads ~14 GB of weights; 128 extra key columns are noise).
CUDA_LENGTH_BUCKET = 128


class CudaBackend:
    name = "cuda"

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        dtype = torch_dtype(opts.torch_dtype_name)
        model_dir = model_dir_for(opts, ctx)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        versions = {"torch": str(torch.__version__), "cuda": str(torch.version.cuda)}
        model: Any
        if ctx.world_size == 1:
            model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, low_cpu_mem_usage=True)
            model = model.eval().to(device)
            parameters = count_parameters(model)
            backend = "cuda"
        else:
            import deepspeed

            model, checkpoint = load_for_deepspeed(model_dir, config, dtype, ctx.world_size)
            parameters = count_parameters(model)
            engine = deepspeed.init_inference(
                model.eval(), **ds_inference_kwargs(dtype, ctx.world_size, checkpoint=checkpoint)
            )
            model = engine.module
            versions["deepspeed"] = str(deepspeed.__version__)
            backend = "cuda-deepspeed-autotp"
        # The lean BLOOM pass matters most here: per-step Python overhead is a GPU decode step's bulk.
        runner_class = CudaBloomRunner if supports_lean_forward(model) else ModelRunner
        runner = runner_class(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            backend=backend,
            parameters=parameters,
            versions=versions,
        )
        if isinstance(runner, CudaBloomRunner):
            runner.configure_static_decode(opts)
            # nccl collectives inside a captured graph are untried here: several ranks step eagerly.
            runner.capture_graphs = ctx.world_size == 1
        return runner


class CudaBloomRunner(BloomRunner):
    """BLOOM on CUDA; with static decode each (batch, length) bucket's step is one CUDA graph."""

    cache_chunk = CUDA_LENGTH_BUCKET
    capture_graphs: bool = True

    def step_graphs(self, shape: SlotShape) -> GraphFactory | None:
        if not self.capture_graphs:
            return None
        # The last cache position is only written by a row's final possible token: the warm-up
        # run before a capture may scribble there.
        return cuda_graphs(self.device, scratch_position=shape.length - 1)
