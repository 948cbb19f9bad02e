"""Pure text formatting of what the client prints: tables, the blog's batch blocks, summaries."""

from __future__ import annotations

from collections.abc import Sequence

from bloomz_api.client.bench import BenchRow

SEPARATOR = "-" * 50
BENCH_HEADERS = ("mode", "model", "cards", "latency (s)", "tokens/s", "first token (ms)", "per token (ms)")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to their widest cell (readable raw and rendered)."""
    widths = [len(header) for header in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}")
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def bench_cells(row: BenchRow) -> list[str]:
    return [
        row.mode,
        row.model,
        str(row.cards) if row.cards else "-",  # 0: not known (the HTTP API does not tell)
        f"{row.latency_s:.3f}",
        f"{row.tokens_per_second:.1f}",
        f"{row.first_token_ms:.1f}",
        f"{row.per_token_ms:.2f}",
    ]


def bench_report(rows: Sequence[BenchRow], ratio: float | None) -> str:
    """the blog's table for each mode, what was measured, and the end-to-end / server ratio."""
    lines = [format_table(BENCH_HEADERS, [bench_cells(row) for row in rows])]
    if rows:
        first = rows[0]
        lines.append(
            f"{first.new_tokens} new tokens, greedy, batch 1, prompt {first.prompt_tokens} tokens, "
            f"median of {first.iterations} runs"
        )
    if ratio is not None:
        lines.append(f"client / server latency: {ratio:.3f}")
    return "\n".join(lines)


def batch_block(number: int, inputs: Sequence[str], outputs: Sequence[str]) -> str:
    """One batch the way optimum-habana's run_generation.py prints it."""
    return "\n".join([f"Batch n°{number}", f"Input: {list(inputs)}", f"Output: {list(outputs)}", SEPARATOR])


def throughput_summary(samples: int, generated_tokens: int, seconds: float) -> str:
    rate = generated_tokens / seconds if seconds > 0 else 0.0
    stats = f"Throughput = {rate:.2f} tokens/second"
    return "\n".join(
        [
            "Stats:",
            "-" * len(stats),
            stats,
            f"Samples = {samples}",
            f"Generated tokens = {generated_tokens}",
            f"Total runtime = {seconds:.3f} seconds",
            "-" * len(stats),
        ]
    )
