#!/usr/bin/env bash
# Builds, pushes or lists the container images, tagged with the package version from pyproject.toml.
#
#   scripts/images.sh build [IMAGE...]   # docker build (all four images by default)
#   scripts/images.sh push  [IMAGE...]   # docker push of what `build` tagged
#   scripts/images.sh list  [IMAGE...]   # print "IMAGE DOCKERFILE REFERENCE" lines, build nothing
#
# IMAGE is one of: operator runtime-gaudi runtime-cuda runtime-cpu.
# Environment: REGISTRY (default ghcr.io/bloomz-operator), VERSION (default: pyproject.toml's version),
# ENGINE (default docker; podman works too), BUILD_ARGS (extra arguments for `build`, e.g. --platform).
# The Gaudi image's tag also carries the SynapseAI version it is built on (the ARG in its Dockerfile):
# a runtime-gaudi image only runs on nodes whose Gaudi driver matches that version.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-ghcr.io/bloomz-operator}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)}
ENGINE=${ENGINE:-docker}
ALL_IMAGES=(operator runtime-gaudi runtime-cuda runtime-cpu)

die() { echo "images.sh: $*" >&2; exit 2; }
[ -n "$VERSION" ] || die "no version found in pyproject.toml"

# The default value of `ARG NAME=value` in a Dockerfile.
dockerfile_arg() { sed -n "s/^ARG $2=\(.*\)$/\1/p" "$1" | head -n1; }

dockerfile_of() { echo "docker/$1.Dockerfile"; }

reference_of() {
  local image=$1 tag=$VERSION
  if [ "$image" = runtime-gaudi ]; then
    local synapse
    synapse=$(dockerfile_arg "$(dockerfile_of "$image")" SYNAPSE_VERSION)
    [ -n "$synapse" ] || die "no SYNAPSE_VERSION ARG in $(dockerfile_of "$image")"
    tag="${VERSION}-synapse${synapse}"
  fi
  echo "${REGISTRY}/${image}:${tag}"
}

action=${1:-}
[ $# -gt 0 ] && shift
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")
for image in "${images[@]}"; do
  [ -f "$(dockerfile_of "$image")" ] || die "unknown image '$image' (known: ${ALL_IMAGES[*]})"
done

case "$action" in
  list)
    for image in "${images[@]}"; do
      echo "$image $(dockerfile_of "$image") $(reference_of "$image")"
    done
    ;;
  build)
    for image in "${images[@]}"; do
      ref=$(reference_of "$image")
      echo "[images] building $ref"
      # shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose
      "$ENGINE" build -f "$(dockerfile_of "$image")" --build-arg "VERSION=${VERSION}" ${BUILD_ARGS:-} -t "$ref" .
    done
    ;;
  push)
    for image in "${images[@]}"; do
      ref=$(reference_of "$image")
      echo "[images] pushing $ref"
      "$ENGINE" push "$ref"
    done
    ;;
  *)
    die "usage: scripts/images.sh {build|push|list} [IMAGE...]"
    ;;
esac
