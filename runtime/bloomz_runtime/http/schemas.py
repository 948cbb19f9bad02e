"""Request bodies of the OpenAI-compatible API (pydantic), and their mapping onto our parameters.

The mapping only renames: range checks are the shared validator's (validation.py), so HTTP and
gRPC refuse the same things with the same reasons. Unknown fields are ignored, as OpenAI
servers do; fields we cannot honour are refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bloomz_runtime.errors import InvalidArgument

# OpenAI's default: sampling at temperature 1 unless the request says otherwise.
OPENAI_DEFAULT_TEMPERATURE = 1.0


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, description="extension; 0 or -1: off")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    ignore_eos: bool = False
    min_tokens: int = 0
    repetition_penalty: float | None = None
    truncate_prompt_tokens: int | None = None
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None

    def unsupported(self) -> None:
        """400 for what this server does not do, instead of ignoring it."""
        if self.n != 1:
            raise InvalidArgument(f"n must be 1 (one choice per prompt), got {self.n}")
        if self.logprobs not in (None, False):
            raise InvalidArgument("logprobs is not supported")
        if self.presence_penalty or self.frequency_penalty:
            raise InvalidArgument("presence_penalty and frequency_penalty are not supported; "
                                  "use repetition_penalty")  # fmt: skip
        if self.min_tokens:
            raise InvalidArgument("min_tokens is not supported")
        if self.stream_options is not None and not self.stream:
            raise InvalidArgument("stream_options is only allowed with stream: true")

    def fields(self, max_tokens: int | None) -> dict[str, Any]:
        """Our GenerationParameters names for the shared validator (only what the caller set)."""
        self.unsupported()
        out: dict[str, Any] = {}
        if max_tokens is not None:
            out["max_new_tokens"] = max_tokens
        temperature = OPENAI_DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        # Temperature 0 is greedy, as in the OpenAI API; anything above samples.
        out["temperature"] = temperature
        out["do_sample"] = temperature > 0
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.top_k is not None:
            out["top_k"] = 0 if self.top_k == -1 else self.top_k
        if self.seed is not None:
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")
            out["seed"] = self.seed
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.repetition_penalty is not None:
            out["repetition_penalty"] = self.repetition_penalty
        if self.truncate_prompt_tokens is not None:
            out["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        if self.ignore_eos:
            out["ignore_eos"] = True
        return out

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        if self.best_of not in (None, 1):
            raise InvalidArgument(f"best_of must be 1, got {self.best_of}")
        if self.suffix:
            raise InvalidArgument("suffix is not supported")
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise InvalidArgument("prompt must not be an empty list")
        return prompts


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
