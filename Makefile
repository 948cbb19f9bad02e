# One entry point for people and CI. Every target sets up what it needs (scripts/setup-env.sh).
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)
# DeepSpeed JIT-builds its CPU all-reduce against this checkout's venv; a per-checkout build folder keeps
# two checkouts on one machine (a CI clone and a work tree) from rebuilding it over each other (~35 s).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup proto lint test demo

setup:
	@bash scripts/setup-env.sh

## proto: regenerate the gRPC stubs from api/bloomz_api/proto/*.proto
proto: setup
	$(PY) scripts/gen_proto.py

## lint: ruff + mypy
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

## test: lint, then the whole test suite (unit, integration, end-to-end on CPU)
test: lint
	$(PY) -m pytest -q

# --- packaging: container images and the Helm chart (docs/cluster.md) ---
.PHONY: images push chart chart-sync chart-test
## images: build the operator and runtime images, tagged with the package version (REGISTRY=..., ENGINE=...)
images:
	bash scripts/images.sh build
## push: push the images that `make images` tagged
push:
	bash scripts/images.sh push
## chart-sync: copy crds/ into the chart, regenerate its RBAC file and version from their sources
chart-sync: setup
	bash scripts/sync-chart.sh
## chart: lint and package the Helm chart into dist/
chart: setup
	helm lint --strict charts/bloomz-operator
	helm package charts/bloomz-operator --destination dist
## chart-test: the packaging tests (helm lint/template, schema, RBAC, CRD copy, settings, Dockerfiles)
chart-test: setup
	$(PY) -m pytest -q tests/packaging

# --- benchmarks (docs/client.md, BENCHMARKS.md) ---
.PHONY: bench bench-vllm bench-gpu
BENCH_ARGS ?=
## bench: our runtime vs plain transformers, vLLM-CPU and the roofline; appends to BENCHMARKS.md (BENCH_ARGS=...)
bench: setup
	$(PY) -m bloomz_runtime.benchmarks $(BENCH_ARGS)
## bench-gpu: on a CUDA machine (one H200): 7B1-shaped BLOOM, plain transformers vs ours (static decode, CUDA graphs)
# Batch 1 and 16 clients, 100 tokens, bf16 random weights built on the GPU; prints ratios and the HBM roofline,
# JSON in bench-results/. Uses the machine's own CUDA torch and transformers 4.55 (GPU_PY), never .venv's CPU torch.
GPU_PY ?= python3
BENCH_GPU_ARGS ?=
bench-gpu:
	PYTHONPATH=$(CURDIR)/runtime:$(CURDIR)/api$${PYTHONPATH:+:$$PYTHONPATH} timeout 540 \
		$(GPU_PY) -m bloomz_runtime.benchmarks.gpu $(BENCH_GPU_ARGS)
## bench-vllm: install the vLLM-CPU peer into .cache/vllm-venv (about 3.4 GB; `make bench` does it on first use)
bench-vllm:
	bash scripts/setup-vllm.sh

# --- local sandbox: API emulator + operator + local pod runner, no cluster (docs/sandbox.md) ---
.PHONY: sandbox demo
SANDBOX_ARGS ?=
## sandbox: bring up the sandbox, apply examples/bloomz-cpu.yaml, keep it running until Ctrl-C (SANDBOX_ARGS=...)
sandbox: setup
	$(PY) -m bloomz_sandbox $(SANDBOX_ARGS)
## demo: set up, then the sandbox once: Ready, latency, kubectl get bloomz, a generate request, clean exit
demo: setup
	$(PY) -m bloomz_sandbox --once $(SANDBOX_ARGS)

# --- the Kubernetes API emulator alone, for kubectl and client experiments (sandbox/bloomz_sandbox/apiserver/) ---
.PHONY: apiserver
APISERVER_PORT ?= 0
## apiserver: serve only the API emulator with the CRD; writes .cache/apiserver.kubeconfig; Ctrl-C stops it
apiserver: setup
	$(PY) -m bloomz_sandbox.apiserver --port $(APISERVER_PORT) \
		--crd crds/bloomzinferences.inference.bloomz.dev.yaml --kubeconfig .cache/apiserver.kubeconfig

# --- the runtime alone: tiny model, 2 ranks under mpirun on CPU, client bench + dataset (docs/runtime.md) ---
.PHONY: demo-runtime
## demo-runtime: build the tiny checkpoint, serve it with 2 ranks, run `client bench` and `client dataset`, stop
demo-runtime: setup
	$(PY) -m bloomz_runtime.demo

# --- the operator alone: CRD, builders, planner, status, latency, Kopf against the API emulator (docs/operator.md) ---
.PHONY: test-operator
## test-operator: lint the operator's files and run tests/operator
test-operator: setup
	$(PY) -m ruff check operator/bloomz_operator tests/operator
	$(PY) -m pytest -q tests/operator

# --- multi-node replicas: groups of pods joined by mpirun over SSH (docs/multinode.md) ---
.PHONY: test-multinode
## test-multinode: the group builders, planner and status, the launcher's multi-node parts, a 2-"node" CPU group
test-multinode: setup
	$(PY) -m pytest -q tests/operator/test_operator_multinode.py tests/runtime/test_multinode.py \
		tests/runtime/test_multinode_e2e.py tests/sandbox/test_sandbox_multinode_scheduling.py \
		tests/sandbox/test_sandbox_volume_sources.py tests/sandbox/test_sandbox_cluster_dns.py \
		tests/sandbox/test_podrunner_multinode.py tests/e2e/test_sandbox_multinode.py

# --- a multi-node group in the sandbox: 2 simulated nodes, real sshd/ssh, pod DNS via nss_wrapper (docs/sandbox.md) ---
.PHONY: demo-multinode
## demo-multinode: the sandbox with 2 nodes and examples/bloomz-cpu-2nodes.yaml (a leader + a worker pod), once
demo-multinode: setup
	$(PY) -m bloomz_sandbox --nodes 2 --example examples/bloomz-cpu-2nodes.yaml --once \
		--workdir .cache/sandbox-multinode

# --- mutation score of the pure modules (docs/testing.md); slow, so not part of `make test` ---
.PHONY: mutation
MUTATION_ARGS ?=
## mutation: mutmut over each pure module against its fast unit tests; score and surviving mutants per module (MUTATION_ARGS=spec text ...)
mutation: setup
	nice -n 10 $(PY) scripts/mutation.py $(MUTATION_ARGS)
