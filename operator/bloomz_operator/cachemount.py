"""How a pod sees the model cache (spec.cache): the PVC's volume and mount, and the Hugging Face variables.

Shared by the runtime pods' builder (read-only, offline) and the download Job (cache.py, read-write), so
both agree on where huggingface_hub's cache lives on the volume.
"""

from __future__ import annotations

from typing import Any

from .spec import CacheSpec

CACHE_VOLUME = "model-cache"


def hf_home(cache: CacheSpec) -> str:
    """HF_HOME on the volume: huggingface_hub keeps its cache in <HF_HOME>/hub."""
    return f"{cache.mount_path.rstrip('/')}/huggingface"


def runtime_env(cache: CacheSpec) -> dict[str, str]:
    """A runtime pod loads from the cache and never asks the Hub (the Job downloaded it)."""
    return {"HF_HOME": hf_home(cache), "HF_HUB_OFFLINE": "1"}


def cache_volume(cache: CacheSpec, *, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's volume and the container's mount of the cache PVC."""
    claim: dict[str, Any] = {"claimName": cache.claim_name}
    mount: dict[str, Any] = {"name": CACHE_VOLUME, "mountPath": cache.mount_path}
    if read_only:
        claim["readOnly"] = True
        mount["readOnly"] = True
    return {"name": CACHE_VOLUME, "persistentVolumeClaim": claim}, mount
