"""One rank of the per-node download test, started by mpirun:

    download_rank.py HUB_ROOT CACHE_DIR OUT_DIR

Real rank set-up (init_distributed over gloo) and the real resolve_model_dir with its node barrier; the
Hub is FakeHub, whose download takes a moment. Each rank writes its Hub calls and its snapshot path to
OUT_DIR/rank<N>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bloomz_runtime.backends.loading import resolve_model_dir
from bloomz_runtime.dist import init_distributed
from fake_hub import FakeHub


def main(hub_root: str, cache_dir: str, out_dir: str) -> None:
    hub = FakeHub(Path(hub_root), Path(cache_dir), download_s=1.0)
    hub.install()
    ctx = init_distributed("cpu", 2)
    path = resolve_model_dir(
        "bigscience/bloomz-tiny",
        "v1",
        local_rank=ctx.local_rank,
        node_barrier=ctx.download_barrier,
        cache_dir=cache_dir,
    )
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps({"calls": hub.calls, "path": str(path)}))
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
