"""The launcher's pure parts: the mpirun command line, rank environment, exit codes, options."""

from __future__ import annotations

from pathlib import Path

import pytest
from bloomz_api.options import ServeOptions, parse_options, to_argv
from bloomz_runtime.dist import rank_env
from bloomz_runtime.launch import (
    LEADER_PIDFILE_ENV,
    build_command,
    exit_code,
    forwarded_env_names,
    rank_environment,
    threads_per_rank,
)


def opts(**kw: object) -> ServeOptions:
    base: dict[str, object] = {"model": "/models/bloomz", "device": "cpu", "world_size": 2}
    base.update(kw)
    return ServeOptions(**base)  # type: ignore[arg-type]


def test_single_rank_runs_serve_directly() -> None:
    cmd = build_command(opts(world_size=1), {}, python="py")
    assert cmd[:4] == ["py", "-u", "-m", "bloomz_runtime.serve"]
    assert "mpirun" not in cmd


def test_mpirun_command_for_cpu() -> None:
    env = {"MASTER_PORT": "1234", "PATH": "/bin", "UNRELATED": "x", "HF_HOME": "/hf"}
    cmd = build_command(opts(world_size=4), env, python="py", is_root=False)
    assert cmd[:3] == ["mpirun", "-np", "4"]
    assert "--allow-run-as-root" not in cmd
    assert cmd[cmd.index("--bind-to") + 1] == "none"
    forwarded = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-x"]
    assert forwarded == ["HF_HOME", "MASTER_PORT", "PATH"]
    serve = cmd.index("py")
    assert cmd[serve : serve + 4] == ["py", "-u", "-m", "bloomz_runtime.serve"]
    assert cmd[serve + 4 :] == to_argv(opts(world_size=4))


def test_root_adds_allow_run_as_root() -> None:
    assert "--allow-run-as-root" in build_command(opts(), {}, is_root=True)


def test_threads_per_rank_never_zero() -> None:
    assert threads_per_rank(2, 2) == 1
    assert threads_per_rank(1, 4) == 1
    assert threads_per_rank(16, 2) == 8


def test_rank_environment_sets_what_ranks_agree_on() -> None:
    env = rank_environment(
        opts(bind_host="127.0.0.5"), {"PATH": "/bin"}, master_port=4242, cpu_count=4, pidfile="/p"
    )
    assert env["MASTER_PORT"] == "4242"
    assert env["MASTER_ADDR"] == "127.0.0.1"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["BLOOMZ_BIND_HOST"] == "127.0.0.5"
    assert env[LEADER_PIDFILE_ENV] == "/p"
    # A MASTER_PORT set by the user wins.
    assert (
        rank_environment(opts(), {"MASTER_PORT": "99"}, master_port=1, cpu_count=1, pidfile=None)[
            "MASTER_PORT"
        ]
        == "99"
    )


def test_forwarded_env_names_are_sorted_and_filtered() -> None:
    names = forwarded_env_names({"PT_HPU_LAZY_MODE": "1", "HOME": "/r", "SECRET": "s", "NCCL_DEBUG": "INFO"})
    assert names == ["HOME", "NCCL_DEBUG", "PT_HPU_LAZY_MODE"]


def test_exit_code_of_signalled_child() -> None:
    assert exit_code(0) == 0
    assert exit_code(3) == 3
    assert exit_code(-9) == 137


def test_rank_env_from_open_mpi() -> None:
    env = rank_env(
        {
            "OMPI_COMM_WORLD_RANK": "3",
            "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
            "MASTER_PORT": "5555",
        }
    )
    assert env == {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "5555",
    }


def test_rank_env_without_mpi_is_one_process() -> None:
    env = rank_env({})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_SIZE"]) == ("0", "1", "0", "1")


def test_options_round_trip_through_argv() -> None:
    argv = [
        "--model", "m", "--device", "hpu", "--world-size", "8", "--dtype", "bfloat16", "--no-kv-cache",
        "--no-hpu-graphs", "--no-warmup", "--served-model-name", "bloomz", "--batch-wait-ms", "0",
        "--revision", "a1b2c3", "--grace-period-s", "12.5", "--screened-greedy",
    ]  # fmt: skip
    parsed = parse_options(argv, environ={"BLOOMZ_BIND_HOST": "127.0.0.9"})
    assert parsed.bind_host == "127.0.0.9"
    assert (parsed.kv_cache, parsed.hpu_graphs, parsed.warmup) == (False, False, False)
    assert parsed.revision == "a1b2c3"
    assert parse_options(to_argv(parsed), environ={"BLOOMZ_BIND_HOST": "127.0.0.9"}) == parsed


def test_argv_holds_the_required_flags_and_what_differs_from_the_defaults() -> None:
    assert to_argv(ServeOptions(model="m", device="cpu")) == ["--model", "m", "--device", "cpu"]
    assert to_argv(ServeOptions(model="m", device="cpu", kv_cache=False, screened_greedy=False, port=1)) == [
        "--model", "m", "--device", "cpu", "--port", "1", "--no-kv-cache", "--no-screened-greedy",
    ]  # fmt: skip


def test_every_option_field_but_the_bind_host_is_a_flag() -> None:
    # A field without a flag would silently never reach the ranks.
    from dataclasses import fields

    from bloomz_api.options import build_parser

    dests = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    assert {f.name for f in fields(ServeOptions)} - dests == {"bind_host"}


@pytest.mark.parametrize(("device", "dtype"), [("cpu", "float32"), ("cuda", "bfloat16"), ("hpu", "bfloat16")])
def test_default_dtype_per_device(device: str, dtype: str) -> None:
    assert parse_options(["--model", "m", "--device", device], environ={}).torch_dtype_name == dtype


def test_bad_world_size_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_options(["--model", "m", "--device", "cpu", "--world-size", "0"], environ={})


def test_only_the_jobs_own_deepspeed_shm_segments_are_removed(tmp_path: Path) -> None:
    from bloomz_runtime.dist import deepspeed_shm_prefix
    from bloomz_runtime.launch import remove_deepspeed_shm

    ours = deepspeed_shm_prefix(1000, "127.0.0.1", "29500")
    for name in (f"{ours}0", f"{ours}1", f"{deepspeed_shm_prefix(1000, '127.0.0.1', '29501')}0",
                 f"{deepspeed_shm_prefix(0, '127.0.0.1', '29500')}0", f"{ours}notes", "other"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    removed = remove_deepspeed_shm(env, shm_dir=tmp_path, uid=1000)
    assert sorted(p.name for p in removed) == [f"{ours}0", f"{ours}1"]
    assert len(list(tmp_path.iterdir())) == 4  # another job's, another user's, and unrelated files stay
    assert remove_deepspeed_shm({}, shm_dir=tmp_path, uid=1000) == []
    assert remove_deepspeed_shm(env, shm_dir=tmp_path / "missing", uid=1000) == []


def test_a_rank_unlinks_only_its_own_segment(tmp_path: Path) -> None:
    import os

    from bloomz_runtime.dist import deepspeed_shm_prefix, unlink_own_shm_segment

    prefix = deepspeed_shm_prefix(os.getuid(), "127.0.0.1", "29500")
    for rank in (0, 1):
        (tmp_path / f"{prefix}{rank}").write_bytes(b"x")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1"}
    assert unlink_own_shm_segment(env, shm_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{prefix}0"]
    assert not unlink_own_shm_segment(env, shm_dir=tmp_path)  # already gone
    assert not unlink_own_shm_segment({}, shm_dir=tmp_path)


@pytest.mark.parametrize(
    ("flag", "value"), [((), None), (("--screened-greedy",), True), (("--no-screened-greedy",), False)]
)
def test_the_screened_greedy_choice_is_three_way_and_round_trips(
    flag: tuple[str, ...], value: bool | None
) -> None:
    """No flag: the runtime decides by CPU (AVX-512); a flag forces it either way."""
    parsed = parse_options(["--model", "m", "--device", "cpu", *flag], environ={})
    assert parsed.screened_greedy is value
    assert parse_options(to_argv(parsed), environ={}) == parsed
