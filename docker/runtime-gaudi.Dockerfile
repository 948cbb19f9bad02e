# The Intel Gaudi runtime image: Intel's Gaudi PyTorch installer image (SynapseAI, its torch build,
# habana_frameworks, Open MPI), Habana's DeepSpeed fork, optimum-habana and bloomz_runtime.
#   docker build -f docker/runtime-gaudi.Dockerfile -t ghcr.io/bloomz-operator/runtime-gaudi:0.1.0-synapse1.24.0 .
#
# The versions move together (check Intel's support matrix before changing one):
#   SynapseAI 1.24.0  <->  PyTorch 2.10.0 (Intel's build, in the base image)
#                     <->  optimum-habana 1.21.2 (validated with the 1.24 stack; transformers 4.55.x)
#                     <->  Habana's DeepSpeed fork tag 1.23.0 (the tag optimum-habana 1.21.2 documents)
# Runs as root: Intel's images and the Gaudi device plugin expect it, and mpirun is told so below.
ARG SYNAPSE_VERSION=1.24.0
ARG GAUDI_TORCH_VERSION=2.10.0
ARG GAUDI_OS=ubuntu22.04
# Intel's release tag (<SynapseAI>-<build>), never the moving "latest": a rebuild gets the same base.
ARG SYNAPSE_BUILD=1007
ARG GAUDI_BASE_IMAGE=vault.habana.ai/gaudi-docker/${SYNAPSE_VERSION}/${GAUDI_OS}/habanalabs/pytorch-installer-${GAUDI_TORCH_VERSION}:${SYNAPSE_VERSION}-${SYNAPSE_BUILD}

FROM ${GAUDI_BASE_IMAGE}
ARG VERSION=0.1.0
ARG SYNAPSE_VERSION
ARG OPTIMUM_HABANA_VERSION=1.21.2
ARG DEEPSPEED_FORK_TAG=1.23.0
# The commit the fork's tag points at (`git ls-remote https://github.com/HabanaAI/DeepSpeed refs/tags/<tag>`):
# a tag can move, a commit cannot. Required: the build stops without it.
ARG DEEPSPEED_FORK_COMMIT=""
LABEL org.opencontainers.image.title="bloomz-runtime-gaudi" \
      org.opencontainers.image.description="BLOOMZ gRPC runtime (mpirun + DeepSpeed-inference, optimum-habana) for Intel Gaudi" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.bloomz.synapse-version="${SYNAPSE_VERSION}"
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
# Never let pip replace what Intel's image brings: torch and habana_frameworks are pinned to the installed
# versions, DeepSpeed is Habana's fork (from its git tag; PyPI's deepspeed lacks the HPU accelerator), and
# the gaudi extra adds optimum-habana and the runtime's own dependencies only.
RUN expr "${DEEPSPEED_FORK_COMMIT}" : '[0-9a-f]\{40\}$' > /dev/null \
 || { echo "DEEPSPEED_FORK_COMMIT: pass the 40-hex commit of HabanaAI/DeepSpeed tag ${DEEPSPEED_FORK_TAG}" >&2; exit 1; }
RUN sh /usr/local/bin/base-constraints.sh /opt/bloomz/base-constraints.txt \
 && pip install --constraint /opt/bloomz/base-constraints.txt \
      "git+https://github.com/HabanaAI/DeepSpeed.git@${DEEPSPEED_FORK_COMMIT}" \
 && pip install --constraint /opt/bloomz/base-constraints.txt --constraint constraints-runtime.txt \
      "optimum-habana==${OPTIMUM_HABANA_VERSION}" ".[gaudi]" \
 && python3 -c "import bloomz_runtime.launch; from importlib.metadata import version as v; \
print('torch', v('torch'), 'deepspeed', v('deepspeed'), 'optimum-habana', v('optimum-habana'))"
# The pod runs as root (device files, hugepages, SYS_NICE), so mpirun must be allowed to; optimum-habana's
# DeepSpeed path runs Gaudi in lazy mode.
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    PT_HPU_LAZY_MODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8000 9090
ENTRYPOINT ["python3", "-m", "bloomz_runtime.launch"]
