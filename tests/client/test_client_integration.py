"""The client against a real runtime serving the tiny checkpoint (one server for the module)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bloomz_api.client import cli
from bloomz_api.client.dataset import SAMPLE_DATASET
from bloomz_api.client.formatting import BENCH_HEADERS
from helpers import RuntimeProcess, run_runtime

pytestmark = pytest.mark.slow

PROMPT = "DeepSpeed is a machine learning framework"


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path) -> Iterator[RuntimeProcess]:
    with run_runtime(tiny_checkpoint, extra_args=["--max-new-tokens", "64"]) as running:
        yield running


@pytest.fixture(scope="module")
def plain_greedy_ids(tiny_checkpoint: Path, tokenizer) -> list[int]:
    """What plain transformers generates greedily for PROMPT: the reference the client must show."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**ids, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    return [int(token) for token in output[0, ids["input_ids"].shape[1] :]]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_generate_prints_the_greedy_continuation(
    runtime: RuntimeProcess, tokenizer, plain_greedy_ids
) -> None:
    code, out, _ = run_cli(
        "--target", runtime.target, "generate", PROMPT, "--max-new-tokens", "12", "--ignore-eos"
    )
    assert code == 0
    assert out == tokenizer.decode(plain_greedy_ids) + "\n"


def test_generate_json_carries_counts_ids_and_timings(runtime: RuntimeProcess, plain_greedy_ids) -> None:
    code, out, _ = run_cli(
        "generate", PROMPT, "--max-new-tokens", "12", "--ignore-eos", "--json", "--target", runtime.target
    )
    assert code == 0
    response = json.loads(out)
    assert response["token_ids"] == plain_greedy_ids
    assert response["generated_tokens"] == 12 and response["finish_reason"] == "FINISH_REASON_LENGTH"
    assert response["prompt"] == PROMPT and response["timings"]["total_ms"] > 0


def test_stream_prints_the_same_text_piece_by_piece(
    runtime: RuntimeProcess, tokenizer, plain_greedy_ids
) -> None:
    args = (
        "--target",
        runtime.target,
        "generate",
        PROMPT,
        "--max-new-tokens",
        "12",
        "--ignore-eos",
        "--stream",
    )
    code, out, _ = run_cli(*args)
    assert code == 0 and out == tokenizer.decode(plain_greedy_ids) + "\n"
    code, out, _ = run_cli(*args, "--json")
    messages = [json.loads(line) for line in out.splitlines()]
    assert len(messages) > 1  # really streamed, not one final message
    assert [token for message in messages for token in message["token_ids"]] == plain_greedy_ids
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH" and messages[-1]["generated_tokens"] == 12


def test_info_through_the_module_entry_point(runtime: RuntimeProcess, tiny_checkpoint: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bloomz_runtime.client", "--target", runtime.target, "--json", "info"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    info = json.loads(completed.stdout)
    assert info["device"] == "cpu" and info["world_size"] == 1 and info["dtype"] == "float32"
    assert info["model"] == str(tiny_checkpoint)
    assert info["limits"]["max_new_tokens"] == 64
    code, out, _ = run_cli("--target", runtime.target, "info")
    assert code == 0 and "device:      cpu x 1" in out and "max new tokens 64" in out


def test_health_is_serving_and_an_unknown_service_exits_1(runtime: RuntimeProcess) -> None:
    assert run_cli("--target", runtime.target, "health")[:2] == (0, "SERVING\n")
    code, _, err = run_cli("--target", runtime.target, "health", "--service", "no.such.Service")
    assert code == 1 and "NOT_FOUND" in err


def test_bench_both_modes(runtime: RuntimeProcess, plain_greedy_ids, tiny_checkpoint: Path) -> None:
    common = ("--target", runtime.target, "bench", "--prompt", PROMPT, "--max-new-tokens", "12")
    code, out, _ = run_cli(*common, "--warmup", "1", "--iterations", "2", "--json")
    assert code == 0
    result = json.loads(out)
    server, client = result["rows"]
    assert (server["mode"], client["mode"]) == ("server", "client")
    for row in (server, client):
        assert row["cards"] == 1 and row["new_tokens"] == 12 and row["iterations"] == 2
        assert row["latency_s"] > 0 and row["first_token_ms"] > 0 and row["per_token_ms"] > 0
        assert row["prompt_tokens"] == server["prompt_tokens"] > 0
    assert client["token_ids"] == plain_greedy_ids  # the timed runs really were greedy
    assert result["client_to_server_ratio"] == pytest.approx(client["latency_s"] / server["latency_s"])

    code, out, _ = run_cli(*common, "--warmup", "0", "--iterations", "1", "--mode", "server")
    assert code == 0
    lines = out.splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == list(BENCH_HEADERS)
    assert [cell.strip() for cell in lines[2].strip("|").split("|")][:3] == [
        "server",
        str(tiny_checkpoint),
        "1",
    ]
    assert len(lines) == 4 and "client / server" not in out  # one mode: one row, no ratio


def test_paired_bench_runs_the_callback_after_each_pair(runtime: RuntimeProcess, plain_greedy_ids) -> None:
    """The benchmark measures a baseline between our runs there (benchmarks/peer.py)."""
    from bloomz_api.client.bench import run_paired_bench
    from bloomz_api.client.connection import TextGenerationClient

    order: list[str] = []
    with TextGenerationClient(runtime.target, timeout=60.0) as client:
        info = client.info()
        server, end_to_end = run_paired_bench(
            client, info, PROMPT, 12, warmup=0, iterations=3, between=lambda: order.append("baseline")
        )
    assert order == ["baseline"] * 3
    assert server.iterations == end_to_end.iterations == 3
    assert list(end_to_end.token_ids) == plain_greedy_ids


def test_server_errors_are_printed_with_their_code_and_exit_1(runtime: RuntimeProcess) -> None:
    # Over the server's --max-new-tokens 64: the server refuses, the client reports it.
    code, out, err = run_cli("--target", runtime.target, "generate", PROMPT, "--max-new-tokens", "65")
    assert code == cli.EXIT_RPC_ERROR and out == ""
    assert err.startswith("error: Generate failed: INVALID_ARGUMENT: ")
    code, _, err = run_cli("--target", runtime.target, "generate", "", "--stream")
    assert code == cli.EXIT_RPC_ERROR and "GenerateStream failed: INVALID_ARGUMENT" in err
    code, out, _ = run_cli("--target", runtime.target, "generate", PROMPT, "--max-new-tokens", "2")
    assert code == 0 and out.strip()  # the server keeps serving


@pytest.fixture(scope="module")
def news_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("news")
    lines = SAMPLE_DATASET.read_text().splitlines()[:5]
    table = pa.Table.from_pylist([json.loads(line) for line in lines])
    paths = {"jsonl": folder / "news.jsonl", "csv": folder / "news.csv", "parquet": folder / "news.parquet"}
    paths["jsonl"].write_text("\n".join(lines) + "\n")
    pa_csv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


DATASET_ARGS = ("--batch-size", "2", "--input-tokens", "6", "--max-new-tokens", "4", "--no-progress")


def test_dataset_prints_batches_like_the_seed(runtime: RuntimeProcess, news_files, tokenizer) -> None:
    code, out, _ = run_cli("--target", runtime.target, "dataset", str(news_files["jsonl"]), *DATASET_ARGS)
    assert code == 0
    blocks = out.split("-" * 50 + "\n")
    assert [block.splitlines()[0] for block in blocks[:3]] == ["Batch n°1", "Batch n°2", "Batch n°3"]
    contents = [json.loads(line)["content"] for line in news_files["jsonl"].read_text().splitlines()]
    first_inputs = [tokenizer.decode(tokenizer(text)["input_ids"][:6]) for text in contents[:2]]
    assert blocks[0].splitlines()[1] == f"Input: {first_inputs}"
    outputs = ast.literal_eval(
        blocks[0].splitlines()[2].removeprefix("Output: ")
    )  # a Python list, as the original benchmark script prints it
    assert [
        output[: len(prompt)] for output, prompt in zip(outputs, first_inputs, strict=True)
    ] == first_inputs
    assert all(len(output) > len(prompt) for output, prompt in zip(outputs, first_inputs, strict=True))
    summary = blocks[3]
    assert "Samples = 5" in summary and "Generated tokens = 20" in summary and "tokens/second" in summary


def test_dataset_reads_jsonl_csv_and_parquet_alike(runtime: RuntimeProcess, news_files) -> None:
    outputs = {}
    for kind, path in news_files.items():
        code, out, _ = run_cli("--target", runtime.target, "--json", "dataset", str(path), *DATASET_ARGS)
        assert code == 0, kind
        records = [json.loads(line) for line in out.splitlines()]
        assert [record["batch"] for record in records[:-1]] == [1, 2, 3]
        assert records[-1]["summary"]["samples"] == 5 and records[-1]["summary"]["generated_tokens"] == 20
        outputs[kind] = [record["outputs"] for record in records[:-1]]
    assert outputs["jsonl"] == outputs["csv"] == outputs["parquet"]


def test_dataset_shows_a_progress_bar_and_refuses_a_missing_column(
    runtime: RuntimeProcess, news_files
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bloomz_runtime.client", "--target", runtime.target, "dataset",
         str(news_files["csv"]), "--limit", "2", "--max-new-tokens", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert "2/2" in completed.stderr  # tqdm's bar on stderr, the batches on stdout
    assert completed.stdout.startswith("Batch n°1\n")
    code, _, err = run_cli("--target", runtime.target, "dataset", str(news_files["csv"]), "--column", "text")
    assert code == cli.EXIT_USAGE and "no column 'text'" in err
    # A batch the server refuses (over its --max-new-tokens 64) ends the run with the server's reason.
    code, out, err = run_cli(
        "--target",
        runtime.target,
        "dataset",
        str(news_files["csv"]),
        "--max-new-tokens",
        "65",
        "--no-progress",
    )
    assert code == cli.EXIT_RPC_ERROR and out == ""
    assert err.startswith("error: Generate failed: INVALID_ARGUMENT: ")
