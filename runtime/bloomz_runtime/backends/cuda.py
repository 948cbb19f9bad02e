"""CUDA backend: transformers on one GPU, DeepSpeed-inference tensor parallelism on several.

Written against transformers' and DeepSpeed's documented APIs; imported only when --device cuda.
"""

from __future__ import annotations

from typing import Any

import torch

from bloomz_runtime.backends.base import ModelRunner, count_parameters, torch_dtype
from bloomz_runtime.backends.bloom import BloomRunner, supports_lean_forward
from bloomz_runtime.backends.loading import (
    ds_inference_kwargs,
    load_for_deepspeed,
    model_dir_for,
)
from bloomz_runtime.dist import DistContext
from bloomz_runtime.options import ServeOptions


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
        runner_class = BloomRunner if supports_lean_forward(model) else ModelRunner
        return runner_class(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            backend=backend,
            parameters=parameters,
            versions=versions,
        )
