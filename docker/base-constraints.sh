#!/bin/sh
# Pins the packages a device base image brings (torch and its companions, Intel Gaudi's habana_frameworks
# wheels, numpy that they were built against) to the versions already installed, as a pip constraints
# file. Installing our package under it can never replace them: pip either keeps them or fails loudly.
#
#   base-constraints.sh OUT_FILE [NAME_REGEX]
#
# NAME_REGEX is an extended regular expression over distribution names (case-insensitive).
# $PYTHON picks the interpreter (default python3).
set -eu
out=${1:?usage: base-constraints.sh OUT_FILE [NAME_REGEX]}
names=${2:-'torch|torchvision|torchaudio|triton|pytorch-triton|habana[-_a-z0-9]*|lightning-habana|numpy'}
python=${PYTHON:-python3}

"$python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
  | grep -iE "^(${names})==" > "$out" || true
if [ ! -s "$out" ]; then
  echo "base-constraints.sh: no installed package matches '${names}'" >&2
  exit 1
fi
echo "base-constraints.sh: keeping the base image's packages:" >&2
cat "$out" >&2
