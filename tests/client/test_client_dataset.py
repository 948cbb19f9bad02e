"""Dataset loading (local files through `datasets`), batching and totals of the dataset mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bloomz_api.client import dataset
from bloomz_api.client.formatting import SEPARATOR, batch_block, throughput_summary


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("a.json", "json"),
        ("a.jsonl", "json"),
        ("a.JSONL", "json"),
        ("a.jsonl.gz", "json"),
        ("dir.v2/a.csv", "csv"),
        ("a.parquet", "parquet"),
    ],
)
def test_format_from_the_extension(name: str, builder: str) -> None:
    assert dataset.builder_for(name) == builder


def test_explicit_format_wins_and_unknown_ones_are_refused() -> None:
    assert dataset.builder_for("data.txt", "jsonl") == "json"
    assert dataset.builder_for("data.json", "csv") == "csv"
    with pytest.raises(dataset.DatasetError, match="--format"):
        dataset.builder_for("data.txt")
    with pytest.raises(dataset.DatasetError, match="unknown format"):
        dataset.builder_for("data.txt", "xml")


def test_keep_texts_drops_empty_samples_and_applies_the_limit() -> None:
    assert dataset.keep_texts(["a", "", "  ", None, "b", "c"], limit=2) == ["a", "b"]
    assert dataset.keep_texts(["a", 3, "b"]) == ["a", "b"]


def test_batches_keep_order_and_the_last_one_is_short() -> None:
    assert dataset.batched(["1", "2", "3", "4", "5"], 2) == [["1", "2"], ["3", "4"], ["5"]]
    assert dataset.batched([], 3) == []
    with pytest.raises(ValueError):
        dataset.batched(["1"], 0)


def test_totals_add_up_the_batches() -> None:
    results = [
        dataset.BatchResult(1, ["a", "b"], ["a x", "b y"], generated_tokens=100, seconds=2.0),
        dataset.BatchResult(2, ["c"], ["c z"], generated_tokens=50, seconds=0.5),
    ]
    summary = dataset.totals(results)
    assert (summary.samples, summary.generated_tokens, summary.seconds) == (3, 150, 2.5)
    assert summary.tokens_per_second == pytest.approx(60.0)
    assert dataset.DatasetTotals(0, 0, 0.0).tokens_per_second == 0.0


def test_batch_block_is_printed_like_the_seed() -> None:
    block = batch_block(3, ["in 1", "in 2"], ["in 1 out", "in 2 out"]).splitlines()
    assert block == ["Batch n°3", "Input: ['in 1', 'in 2']", "Output: ['in 1 out', 'in 2 out']", "-" * 50]
    assert SEPARATOR == "-" * 50


def test_throughput_summary() -> None:
    text = throughput_summary(40, 2000, 8.0)
    assert "Throughput = 250.00 tokens/second" in text
    assert "Samples = 40" in text and "Generated tokens = 2000" in text and "8.000 seconds" in text


def test_the_packaged_sample_is_news_with_headline_and_content() -> None:
    records = [json.loads(line) for line in dataset.SAMPLE_DATASET.read_text().splitlines()]
    assert 30 <= len(records) <= 60
    assert all(set(record) == {"headline", "content"} for record in records)
    assert all(len(record["content"].split()) >= 16 for record in records)  # enough for 16-token prompts
    assert len({record["headline"] for record in records}) == len(records)


def _write_formats(records: list[dict[str, str]], folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records)
    paths = {"jsonl": folder / "news.jsonl", "csv": folder / "news.csv", "parquet": folder / "news.parquet"}
    paths["jsonl"].write_text("".join(json.dumps(record) + "\n" for record in records))
    pa_csv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


@pytest.fixture(scope="module")
def news_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    records = [json.loads(line) for line in dataset.SAMPLE_DATASET.read_text().splitlines()]
    return _write_formats(records, tmp_path_factory.mktemp("news"))


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_local_files_load_through_datasets(news_files: dict[str, Path], kind: str) -> None:
    expected = [json.loads(line)["content"] for line in dataset.SAMPLE_DATASET.read_text().splitlines()]
    assert dataset.load_texts(str(news_files[kind]), column="content") == expected
    assert dataset.load_texts(str(news_files[kind]), column="headline", limit=2)[0].startswith("Open-source")


def test_default_is_the_packaged_sample() -> None:
    texts = dataset.load_texts(None, column="content", limit=5)
    assert len(texts) == 5 and texts[0].startswith("A new open-source build tool")


def test_missing_column_and_missing_file_are_clear_errors(
    news_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(dataset.DatasetError, match="no column 'text'; columns: headline, content"):
        dataset.load_texts(str(news_files["csv"]), column="text")
    with pytest.raises(dataset.DatasetError, match="no such file"):
        dataset.load_texts(str(tmp_path / "absent.jsonl"), column="content")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"content": ""}) + "\n")
    with pytest.raises(dataset.DatasetError, match="no non-empty text"):
        dataset.load_texts(str(empty), column="content")
