"""CPU backend: plain transformers for one rank, DeepSpeed AutoTP over gloo for several."""

from __future__ import annotations

import os

import torch

from bloomz_runtime.backends.base import ModelRunner, count_parameters, torch_dtype
from bloomz_runtime.backends.bloom import BloomRunner, supports_lean_forward
from bloomz_runtime.dist import DistContext
from bloomz_runtime.options import ServeOptions


class CpuBackend:
    name = "cpu"

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        dtype = torch_dtype(opts.torch_dtype_name)
        tokenizer = AutoTokenizer.from_pretrained(opts.model)
        model = AutoModelForCausalLM.from_pretrained(opts.model, torch_dtype=dtype, low_cpu_mem_usage=True)
        model.eval()
        parameters = count_parameters(model)
        versions = {"torch": str(torch.__version__)}
        if ctx.world_size > 1:
            import deepspeed

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
        runner_class = BloomRunner if supports_lean_forward(model) else ModelRunner
        return runner_class(
            model=model,
            tokenizer=tokenizer,
            device=torch.device("cpu"),
            dtype=dtype,
            backend="cpu-autotp" if ctx.world_size > 1 else "cpu",
            parameters=parameters,
            versions=versions,
        )
