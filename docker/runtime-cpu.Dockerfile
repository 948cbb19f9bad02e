# The CPU runtime image: Open MPI, CPU torch, DeepSpeed (AutoTP over gloo) and bloomz_runtime, plus the
# tiny deterministic BLOOM at /models/bloomz-tiny so a BloomzInference with `model: /models/bloomz-tiny`
# and no `storage` runs on any cluster without a model volume.
#   docker build -f docker/runtime-cpu.Dockerfile -t ghcr.io/bloomz-operator/runtime-cpu:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the virtual environment and the baked tiny model ---
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY constraints-cpu.txt pyproject.toml README.md ./
COPY runtime/ runtime/
COPY api/ api/
# torch first from the CPU wheel index (a bare `torch` from PyPI is the multi-GB CUDA build); DeepSpeed's
# setup.py imports torch, so it builds against the torch just installed; then our package, all pinned to
# the versions CI tests (constraints-cpu.txt).
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install --constraint constraints-cpu.txt "setuptools<81" wheel \
 && /opt/venv/bin/pip install --constraint constraints-cpu.txt --no-build-isolation deepspeed \
 && /opt/venv/bin/pip install --constraint constraints-cpu.txt ".[cpu]"
RUN /opt/venv/bin/python -m bloomz_runtime.tiny --out /models/bloomz-tiny

# --- final ---
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bloomz-runtime-cpu" \
      org.opencontainers.image.description="BLOOMZ gRPC runtime (mpirun + DeepSpeed AutoTP) for CPUs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Open MPI runs the ranks. g++ stays: DeepSpeed JIT-compiles its shared-memory all-reduce for the node's
# own CPU (-march=native) when the first process group starts, so it cannot be prebuilt portably; the
# ranks build it under a lock of their own that a killed build cannot leave held (bloomz_runtime.shm_op).
# Debian package versions follow the base image's tag, which pins them (hence no DL3008 pins).
# openssh: multi-node replicas (docs/multinode.md): worker pods run sshd, the leader's mpirun reaches them by ssh.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openmpi-bin g++ openssh-client openssh-server \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /models /models
# mpirun runs fine as a normal user on CPU: the runtime does not need root here.
RUN groupadd --system --gid 10001 bloomz \
 && useradd --system --uid 10001 --gid bloomz --create-home --home-dir /home/bloomz bloomz
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/bloomz \
    HF_HOME=/home/bloomz/.cache/huggingface \
    OMPI_MCA_btl_vader_single_copy_mechanism=none
# (the last one: ranks in a container without SYS_PTRACE cannot use cross-memory attach; use shared memory)
USER 10001:10001
WORKDIR /home/bloomz
EXPOSE 50051 8000 9090
ENTRYPOINT ["python3", "-m", "bloomz_runtime.launch"]
