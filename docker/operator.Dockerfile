# The operator image: Kopf, the Kubernetes client and the gRPC stubs. No torch, no model code.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/bloomz-operator/operator:0.1.0 .
# Built by scripts/images.sh (make images); the Helm chart runs it as a non-root user with a
# read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the operator extra, pinned by the CI constraints ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY constraints-cpu.txt pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
# constraints-cpu.txt pins kopf, kubernetes and grpcio to the versions the tests ran with.
RUN /opt/venv/bin/pip install --constraint constraints-cpu.txt ".[operator]"

# --- final: the interpreter and the virtual environment only ---
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bloomz-operator" \
      org.opencontainers.image.description="Kopf operator for BloomzInference resources (BLOOMZ on Kubernetes)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# A fixed numeric user, so the pod's runAsNonRoot can be verified by the kubelet.
RUN groupadd --system --gid 10001 bloomz \
 && useradd --system --uid 10001 --gid bloomz --no-create-home --home-dir /tmp bloomz
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# Kopf's liveness endpoint (settings livenessPort).
EXPOSE 8080
ENTRYPOINT ["python3", "-m", "bloomz_operator"]
