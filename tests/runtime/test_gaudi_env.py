"""Intel Gaudi's environment is in place before the first habana_frameworks import: in every rank's
environment from the launcher, and again in init_distributed before it imports the hccl backend (a
stand-in habana_frameworks package records what it saw when imported)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bloomz_api.options import ServeOptions
from bloomz_runtime.dist import hpu_environment, init_distributed
from bloomz_runtime.launch import rank_environment

SEEN_AT_IMPORT: dict[str, str | None] = {}


def test_defaults_only_and_no_removed_settings() -> None:
    env = {"PT_HPU_LAZY_MODE": "0"}
    hpu_environment(8, env)
    assert env["PT_HPU_LAZY_MODE"] == "0"  # the user's choice stays
    assert env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"
    assert "PT_HPU_LAZY_ACC_PAR_MODE" not in env  # removed from optimum-habana's recipe
    single: dict[str, str] = {}
    hpu_environment(1, single)
    assert single == {"EXPERIMENTAL_WEIGHT_SHARING": "FALSE", "PT_HPU_LAZY_MODE": "1"}


def test_the_launcher_gives_every_hpu_rank_the_gaudi_environment() -> None:
    opts = ServeOptions(model="m", device="hpu", world_size=8)
    env = rank_environment(opts, {"PATH": "/bin"}, master_port=1, cpu_count=160, pidfile=None)
    assert (env["PT_HPU_LAZY_MODE"], env["PT_HPU_ENABLE_LAZY_COLLECTIVES"]) == ("1", "true")
    cpu = rank_environment(
        ServeOptions(model="m", device="cpu", world_size=2), {}, master_port=1, cpu_count=2, pidfile=None
    )
    assert not any(name.startswith("PT_HPU_") for name in cpu)


@pytest.fixture
def fake_habana(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A habana_frameworks whose hccl module records the Gaudi settings present when it is imported."""
    hccl = tmp_path / "habana_frameworks" / "torch" / "distributed"
    hccl.mkdir(parents=True)
    for package in (hccl.parent.parent, hccl.parent, hccl):
        (package / "__init__.py").write_text("")
    (hccl / "hccl.py").write_text(
        "import os, sys\n"
        "seen = sys.modules['tests_gaudi_seen']\n"
        "for name in ('PT_HPU_LAZY_MODE', 'PT_HPU_ENABLE_LAZY_COLLECTIVES'):\n"
        "    seen[name] = os.environ.get(name)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "tests_gaudi_seen", SEEN_AT_IMPORT)  # type: ignore[arg-type]
    for name in list(sys.modules):
        if name.startswith("habana_frameworks"):
            monkeypatch.delitem(sys.modules, name)


def test_init_distributed_sets_gaudi_settings_before_importing_hccl(
    fake_habana: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as torch_dist

    # Whatever init_distributed exports is undone after the test (set, then removed: recorded either way).
    exported = ("EXPERIMENTAL_WEIGHT_SHARING", "PT_HPU_LAZY_MODE", "PT_HPU_ENABLE_LAZY_COLLECTIVES", "RANK",
                "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
    for name in exported:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    # The process group itself needs Gaudi cards: only its set-up calls are replaced.
    calls: list[str] = []
    monkeypatch.setattr(torch_dist, "init_process_group", lambda **kw: calls.append(kw["backend"]))
    monkeypatch.setattr(torch_dist, "new_group", lambda **kw: "control")
    SEEN_AT_IMPORT.clear()
    ctx = init_distributed("hpu", 2)
    assert calls == ["hccl"] and ctx.world_size == 2
    assert SEEN_AT_IMPORT == {"PT_HPU_LAZY_MODE": "1", "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true"}
