# The NVIDIA GPU runtime image: NVIDIA's PyTorch container (CUDA, NCCL, its torch build, Open MPI, nvcc for
# DeepSpeed's JIT kernels), DeepSpeed from PyPI and bloomz_runtime.
#   docker build -f docker/runtime-cuda.Dockerfile -t ghcr.io/bloomz-operator/runtime-cuda:0.1.0 .
# NGC 25.12: CUDA 13.1, PyTorch 2.10 (NVIDIA build), Python 3.12; needs a recent NVIDIA driver (R580+).
# Pick an older NGC_IMAGE for older drivers. Runs as root, like NVIDIA's image; mpirun is told so below.
ARG NGC_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3

FROM ${NGC_IMAGE}
ARG VERSION=0.1.0
ARG DEEPSPEED_VERSION=0.19.8
LABEL org.opencontainers.image.title="bloomz-runtime-cuda" \
      org.opencontainers.image.description="BLOOMZ gRPC runtime (mpirun + DeepSpeed-inference) for NVIDIA GPUs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/bloomz
# openssh: multi-node replicas (docs/multinode.md): worker pods run sshd, the leader's mpirun reaches them by ssh.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client openssh-server \
 && rm -rf /var/lib/apt/lists/*
COPY docker/base-constraints.sh /usr/local/bin/base-constraints.sh
COPY docker/constraints-runtime.txt pyproject.toml README.md ./
COPY runtime/ runtime/
COPY api/ api/
# Keep NVIDIA's torch, triton and numpy (base-constraints.sh pins them); DeepSpeed's setup.py imports
# torch, so it is built against that torch without build isolation.
RUN sh /usr/local/bin/base-constraints.sh /opt/bloomz/base-constraints.txt \
 && pip install --constraint /opt/bloomz/base-constraints.txt --no-build-isolation \
      "deepspeed==${DEEPSPEED_VERSION}" \
 && pip install --constraint /opt/bloomz/base-constraints.txt --constraint constraints-runtime.txt ".[cuda]" \
 && python3 -c "import bloomz_runtime.launch; from importlib.metadata import version as v; \
print('torch', v('torch'), 'deepspeed', v('deepspeed'), 'transformers', v('transformers'))"
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8000 9090
ENTRYPOINT ["python3", "-m", "bloomz_runtime.launch"]
