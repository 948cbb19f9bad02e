"""Gaudi (HPU) backend, after optimum-habana's examples/text-generation (utils.py).

- ``adapt_transformers_to_gaudi()`` swaps in Gaudi-optimised model code;
- 1 card: the model on ``hpu``, wrapped in HPU graphs (``wrap_in_hpu_graph``);
- N cards: Habana's DeepSpeed fork, model built on the meta device and filled from a checkpoints
  json, ``init_inference`` with BLOOM's injection policy and ``enable_cuda_graph`` = HPU graphs;
- static shapes: prompts are left-padded up to a bucket; BLOOM decodes with static.py's slots
  (cache preallocated, position a device tensor, ``index_copy_`` writes), one HPU graph per
  (batch bucket, length bucket), so graphs are reused, not recompiled per token.

habana_frameworks and optimum-habana exist only in Intel's images: everything is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from bloomz_api.options import ServeOptions

from bloomz_runtime.backends.base import ModelRunner, count_parameters, torch_dtype
from bloomz_runtime.backends.bloom import BloomRunner, supports_lean_forward
from bloomz_runtime.backends.capture import GraphFactory, hpu_graphs
from bloomz_runtime.backends.loading import (
    bloom_injection_policy,
    ds_inference_kwargs,
    load_for_deepspeed,
    model_dir_for,
)
from bloomz_runtime.backends.static import SlotShape, bucket_length
from bloomz_runtime.dist import DistContext, hpu_environment

# Prompt lengths are padded up to a multiple of this (optimum-habana's --bucket_size default is
# per model; 128 keeps a 2048-token limit to 16 graph shapes).
PROMPT_BUCKET = 128


class HpuModelRunner(ModelRunner):
    """Any causal LM on HPU through transformers' (Gaudi-adapted) forward, prompts bucketed."""

    bucket: int = PROMPT_BUCKET
    max_input_tokens: int | None = None

    def prompt_length(self, longest: int) -> int:
        return bucket_length(longest, self.bucket, self.max_input_tokens)

    def after_forward(self) -> None:
        # Lazy mode builds a graph until mark_step; run it now so the step's result is ready.
        import habana_frameworks.torch.core as htcore

        htcore.mark_step()


class HpuBloomRunner(BloomRunner):
    """BLOOM on HPU with static shapes: prompts (and prefill batches) padded to buckets; with
    static decode (the default) rows decode in the slots of a preallocated cache and each
    (batch bucket, length bucket) step is one HPU graph (``--hpu-graphs``); without it, decode
    steps attend over cache buffers that grow a bucket at a time."""

    static_shapes = True
    cache_chunk = PROMPT_BUCKET
    bucket: int = PROMPT_BUCKET
    max_input_tokens: int | None = None
    hpu_graphs: bool = True

    def prompt_length(self, longest: int) -> int:
        return bucket_length(longest, self.bucket, self.max_input_tokens)

    def step_graphs(self, shape: SlotShape) -> GraphFactory | None:
        # Without graphs a static step still has one lazy-mode graph per bucket pair (cached).
        return hpu_graphs() if self.hpu_graphs else None

    def after_forward(self) -> None:
        import habana_frameworks.torch.core as htcore

        htcore.mark_step()


class HpuBackend:
    name = "hpu"

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner:
        """``--hpu-graphs`` with 1 card wraps the model in HPU graphs as optimum-habana does; the
        lean BLOOM pass calls its sub-modules, so there the static shapes are what lets the
        graph compiler's cache be reused."""
        hpu_environment(ctx.world_size, os.environ)
        import habana_frameworks.torch.core  # noqa: F401  registers the hpu device
        from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        adapt_transformers_to_gaudi()
        dtype = torch_dtype(opts.torch_dtype_name)
        device = torch.device("hpu")
        model_dir = model_dir_for(opts, ctx)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        config = AutoConfig.from_pretrained(model_dir)
        versions = {"torch": str(torch.__version__)}
        model: Any
        if ctx.world_size == 1:
            model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
            model = model.eval().to(device)
            parameters = count_parameters(model)
            if opts.hpu_graphs:
                from habana_frameworks.torch.hpu import wrap_in_hpu_graph

                model = wrap_in_hpu_graph(model)
            backend = "hpu"
        else:
            import deepspeed

            model, checkpoint = load_for_deepspeed(
                model_dir, config, dtype, ctx.world_size, host_device="cpu"
            )
            parameters = count_parameters(model)
            policy = bloom_injection_policy() if config.model_type == "bloom" else None
            engine = deepspeed.init_inference(
                model.eval(),
                **ds_inference_kwargs(
                    dtype,
                    ctx.world_size,
                    checkpoint=checkpoint,
                    graphs=opts.hpu_graphs,
                    injection_policy=policy,
                ),
            )
            model = engine.module
            versions["deepspeed"] = str(deepspeed.__version__)
            backend = "hpu-deepspeed"
        runner_class = HpuBloomRunner if supports_lean_forward(model) else HpuModelRunner
        runner = runner_class(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            backend=backend,
            parameters=parameters,
            versions=versions,
        )
        runner.max_input_tokens = opts.max_input_tokens
        if isinstance(runner, HpuBloomRunner):
            runner.hpu_graphs = opts.hpu_graphs
            runner.configure_static_decode(opts)
        return runner
