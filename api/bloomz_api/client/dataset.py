"""The BLOOMZ-on-Gaudi2 blog's whole-dataset mode: complete the first N tokens of every sample of a dataset.

Samples are loaded with `datasets.load_dataset` (a local JSON/JSONL/CSV/Parquet file through the
same builders a Hub dataset uses, or a Hub dataset by name), grouped in batches whose requests are
sent together so the server batches them (over gRPC, or over HTTP as one /v1/completions call
with a list of prompts), and reported per batch like the blog's script.
`datasets` and `tqdm` are imported lazily: the rest of the client needs only grpcio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloomz_api.client.connection import TextGenerationClient
from bloomz_api.client.openai_http import OpenAIHttpClient, greedy_body
from bloomz_api.client.requests import greedy_request

# File extension -> the `datasets` packaged builder that reads it.
_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
FORMATS = ("json", "jsonl", "csv", "parquet")
# The news-style sample shipped with the package (headline, content), like the blog's tldr_news.
SAMPLE_DATASET = Path(__file__).resolve().parent.parent / "data" / "news.jsonl"


class DatasetError(ValueError):
    """The dataset cannot be used as asked (unknown format, missing column, no samples)."""


def builder_for(path: str, explicit_format: str | None = None) -> str:
    """The `datasets` builder for a file: the explicit --format, else the extension."""
    if explicit_format:
        if explicit_format not in FORMATS:
            raise DatasetError(f"unknown format {explicit_format!r}; use one of {', '.join(FORMATS)}")
        return "json" if explicit_format == "jsonl" else explicit_format
    name = Path(path).name.lower()
    for compression in _COMPRESSIONS:
        name = name.removesuffix(compression)
    builder = _BUILDERS.get(Path(name).suffix)
    if builder is None:
        raise DatasetError(f"cannot tell the format of {path!r} from its extension; pass --format")
    return builder


def keep_texts(values: Iterable[Any], limit: int | None = None) -> list[str]:
    """The non-empty text samples, in order, at most `limit` of them (empty prompts are refused)."""
    texts: list[str] = []
    for value in values:
        if limit is not None and len(texts) >= limit:
            break
        if isinstance(value, str) and value.strip():
            texts.append(value)
    return texts


def batched(items: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def load_texts(
    path: str | None,
    *,
    column: str,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    file_format: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Loads one text column from a local file or a Hub dataset, the way the blog's script does.

    With neither, the packaged news sample is used.
    """
    import datasets  # lazy: heavy, and only this subcommand needs it

    if path is not None:
        builder = builder_for(path, file_format)
        if not Path(path).is_file():
            raise DatasetError(f"no such file: {path}")
        table = datasets.load_dataset(builder, data_files=str(path), split=split)
    elif dataset_name:
        table = datasets.load_dataset(dataset_name, dataset_config, split=split)
    else:
        table = datasets.load_dataset("json", data_files=str(SAMPLE_DATASET), split=split)
    if column not in table.column_names:
        raise DatasetError(f"no column {column!r}; columns: {', '.join(table.column_names)}")
    texts = keep_texts(table[column], limit)
    if not texts:
        raise DatasetError(f"column {column!r} holds no non-empty text")
    return texts


@dataclass(frozen=True)
class BatchResult:
    number: int
    inputs: list[str]  # the prompts as the model saw them (after truncation)
    outputs: list[str]  # prompt + continuation, like the blog's script's decoded outputs
    generated_tokens: int
    seconds: float


@dataclass(frozen=True)
class DatasetTotals:
    samples: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def totals(results: Iterable[BatchResult]) -> DatasetTotals:
    samples = generated = 0
    seconds = 0.0
    for result in results:
        samples += len(result.inputs)
        generated += result.generated_tokens
        seconds += result.seconds
    return DatasetTotals(samples, generated, seconds)


def http_batch_result(number: int, reply: dict[str, Any], seconds: float) -> BatchResult:
    """A /v1/completions answer (truncate_prompt_tokens set, so each choice carries its cut prompt)."""
    choices = sorted(reply["choices"], key=lambda choice: choice["index"])
    return BatchResult(
        number=number,
        inputs=[choice["prompt"] for choice in choices],
        outputs=[choice["prompt"] + choice["text"] for choice in choices],
        generated_tokens=int(reply["usage"]["completion_tokens"]),
        seconds=seconds,
    )


def run_http_batch(
    client: OpenAIHttpClient,
    model: str,
    number: int,
    texts: Sequence[str],
    input_tokens: int,
    max_new_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchResult:
    """The batch as one /v1/completions call with a list of prompts: the server batches them."""
    body = greedy_body(model, list(texts), max_new_tokens, truncate_prompt_tokens=input_tokens)
    start = clock()
    reply = client.completions(body)
    return http_batch_result(number, reply, clock() - start)


def run_batch(
    client: TextGenerationClient,
    number: int,
    texts: Sequence[str],
    input_tokens: int,
    max_new_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchResult:
    requests = [
        greedy_request(
            text,
            max_new_tokens,
            truncate_prompt_tokens=input_tokens,
            request_id=f"dataset-{number}-{index}",
        )
        for index, text in enumerate(texts)
    ]
    start = clock()
    responses = client.generate_many(requests)
    seconds = clock() - start
    return BatchResult(
        number=number,
        inputs=[response.prompt for response in responses],
        outputs=[response.prompt + response.text for response in responses],
        generated_tokens=sum(response.generated_tokens for response in responses),
        seconds=seconds,
    )


def run_dataset(
    client: TextGenerationClient | OpenAIHttpClient,
    texts: Sequence[str],
    *,
    batch_size: int,
    input_tokens: int,
    max_new_tokens: int,
    on_batch: Callable[[BatchResult], None],
    progress: bool = True,
) -> DatasetTotals:
    """Runs every batch in order, reporting each through `on_batch`; a progress bar goes to stderr."""
    from tqdm import tqdm

    model = client.model() if isinstance(client, OpenAIHttpClient) else ""
    results: list[BatchResult] = []
    with tqdm(total=len(texts), unit="sample", desc="dataset", disable=not progress) as bar:
        for number, batch in enumerate(batched(texts, batch_size), start=1):
            if isinstance(client, OpenAIHttpClient):
                result = run_http_batch(client, model, number, batch, input_tokens, max_new_tokens)
            else:
                result = run_batch(client, number, batch, input_tokens, max_new_tokens)
            results.append(result)
            on_batch(result)
            bar.update(len(batch))
    return totals(results)
