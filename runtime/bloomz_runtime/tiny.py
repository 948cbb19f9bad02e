"""A deterministic random-weight BLOOM checkpoint and a locally trained tokenizer.

There is no Hub access on the development machines, so tests, the demo and the benchmarks
build their model here and load it through the same ``from_pretrained`` path a real BLOOMZ
checkpoint takes.

    python -m bloomz_runtime.tiny --out DIR [--shape tiny|560m]
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

# BLOOM's special tokens and their ids in bigscience/bloom's tokenizer.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    n_layer: int
    n_head: int
    # None: the trained tokenizer's size. BLOOM's real vocabulary is larger than its tokenizer.
    vocab_size: int | None
    tokenizer_vocab: int
    # Larger than BLOOM's 0.02 so random logits are peaked: float noise from batching or
    # tensor-parallel sharding must not flip a greedy argmax in exact-equality tests.
    initializer_range: float


SHAPES: dict[str, Shape] = {
    "tiny": Shape(
        hidden_size=256, n_layer=4, n_head=8, vocab_size=None, tokenizer_vocab=1024, initializer_range=0.1
    ),
    "560m": Shape(
        hidden_size=1024,
        n_layer=24,
        n_head=16,
        vocab_size=250880,
        tokenizer_vocab=4096,
        initializer_range=0.02,
    ),
}

_SEED_TEXT = """\
DeepSpeed is a machine learning framework for training and inference of very large models.
BLOOM is an autoregressive large language model trained on forty six natural languages and
thirteen programming languages. BLOOMZ is BLOOM fine tuned on a mixture of tasks, which makes it
better at following instructions it has never seen. Habana Gaudi2 is an accelerator for deep
learning with ninety six gigabytes of memory per card and eight cards per server. Kubernetes runs
containers in pods, schedules them on nodes and restarts them when they fail. An operator watches
custom resources and drives the cluster towards the state they describe. Latency is the time a
request takes; throughput is how many tokens per second the whole service produces.
"""

_WORDS = [
    "the",
    "model",
    "server",
    "token",
    "cache",
    "batch",
    "prompt",
    "request",
    "latency",
    "memory",
    "card",
    "node",
    "pod",
    "cluster",
    "data",
    "text",
    "news",
    "market",
    "city",
    "river",
    "school",
    "music",
    "energy",
    "water",
    "light",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "fast",
    "slow",
    "new",
    "old",
    "first",
    "last",
    "every",
    "people",
    "world",
    "time",
    "year",
    "day",
    "week",
    "report",
    "science",
    "health",
    "sport",
    "game",
    "play",
    "build",
    "write",
    "read",
    "learn",
    "train",
    "serve",
    "stream",
    "answer",
    "question",
    "language",
    "code",
    "python",
    "rust",
    "graph",
]


def training_corpus(lines: int = 4000, seed: int = 1234) -> list[str]:
    """Built-in text: the blog's benchmark sentence plus deterministic word salad for a rich merge table."""
    rng = random.Random(seed)
    corpus = _SEED_TEXT.splitlines()
    for _ in range(lines):
        n = rng.randint(4, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        corpus.append(" ".join(words) + rng.choice([".", ",", "?", "!", ""]))
    # Digits and punctuation runs so numbers tokenize into learned pieces.
    corpus.extend(" ".join(str(i) for i in range(j, j + 20)) for j in range(0, 400, 20))
    return corpus


def build_tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer shaped like BLOOM's (same special tokens, same ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BloomTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(itertools.chain(training_corpus()), trainer=trainer)
    fast = BloomTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    # An even vocabulary splits evenly across 2 tensor-parallel ranks.
    if len(fast) % 2:
        fast.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    return fast


def build_checkpoint(out: Path, shape_name: str = "tiny", seed: int = 0) -> Path:
    """Write config, weights (safetensors) and tokenizer to ``out``; same inputs, same bytes."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    shape = SHAPES[shape_name]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.tokenizer_vocab)
    vocab_size = shape.vocab_size or len(tokenizer)
    config = BloomConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        initializer_range=shape.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        torch_dtype="float32",
        # Untied random embeddings keep greedy output varied (tied ones repeat the last token).
        tie_word_embeddings=shape_name != "tiny",
    )
    torch.manual_seed(seed)
    model = BloomForCausalLM(config).eval()
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write the checkpoint to")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_checkpoint(args.out, args.shape, args.seed)
    print(path)


if __name__ == "__main__":
    main()
