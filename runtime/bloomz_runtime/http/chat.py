"""Chat templates: a list of messages -> one prompt, rendered with Jinja like transformers does.

BLOOMZ ships no chat template. The default below (documented in docs/runtime.md) writes
``User: ...`` / ``Assistant: ...`` turns, a system message first as a plain paragraph, and ends
with ``Assistant:`` for the model to continue. ``--chat-template FILE`` replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bloomz_runtime.errors import InvalidArgument

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] in ('system', 'developer') -%}{{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}User: {{ message['content'] }}{{ '\\n' }}"
    "{%- else -%}Assistant: {{ message['content'] }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)


def _raise(message: str) -> None:
    # Templates written for transformers call raise_exception() on bad conversations.
    raise InvalidArgument(message)


class ChatTemplate:
    """A compiled template; the sandbox keeps a template file from reaching the process."""

    def __init__(self, source: str = DEFAULT_CHAT_TEMPLATE, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if not messages:
            raise InvalidArgument("messages must not be empty")
        try:
            return self.template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise InvalidArgument(f"chat template failed: {exc}") from exc


def load_chat_template(source: str | None, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """``source``: a template file, or (as vLLM's flag takes it) the template itself; None: the default."""
    if source is None:
        return ChatTemplate(bos_token=bos_token, eos_token=eos_token)
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            return ChatTemplate(f.read(), bos_token, eos_token)
    if "{{" in source or "{%" in source:
        return ChatTemplate(source, bos_token, eos_token)
    raise FileNotFoundError(f"--chat-template: no such file, and not a Jinja template: {source!r}")
