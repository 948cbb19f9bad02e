"""Pure parts of the HTTP API and of API keys: OpenAI fields -> our parameters, chat templates,
key files (parsing, bearer headers, reload on change)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bloomz_runtime.auth import ApiKeys, bearer_token, key_accepted, parse_keys
from bloomz_runtime.errors import InvalidArgument, Unauthenticated
from bloomz_runtime.http.chat import ChatTemplate
from bloomz_runtime.http.errors import validation_message
from bloomz_runtime.http.schemas import ChatCompletionRequest, CompletionRequest
from bloomz_runtime.validation import Limits, validate_parameters

LIMITS = Limits(max_input_tokens=32, max_new_tokens=100)


def test_openai_fields_map_onto_the_shared_validator() -> None:
    body = CompletionRequest(
        prompt="x", max_tokens=7, temperature=0.5, top_p=0.9, top_k=-1, seed=3, stop="\n",
        repetition_penalty=1.1, ignore_eos=True,
    )  # fmt: skip
    v = validate_parameters(body.fields(body.max_tokens), LIMITS)
    assert v.max_new_tokens == 7 and v.stop == ("\n",) and v.ignore_eos
    s = v.sampling
    assert (s.do_sample, s.temperature, s.top_k, s.seed, s.repetition_penalty) == (True, 0.5, 0, 3, 1.1)


def test_temperature_zero_is_greedy_and_absent_samples_like_openai() -> None:
    greedy = CompletionRequest(prompt="x", temperature=0)
    assert validate_parameters(greedy.fields(None), LIMITS).sampling.is_plain_greedy
    default = CompletionRequest(prompt="x")
    assert validate_parameters(default.fields(None), LIMITS).sampling.do_sample


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"prompt": "x", "n": 2}, "n must be 1"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "x", "min_tokens": 3}, "min_tokens"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "seed": -1}, "seed"),
    ],
)
def test_what_we_cannot_honour_is_refused(body: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        CompletionRequest.model_validate(body).fields(None)


def test_prompt_lists_and_their_limits() -> None:
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    with pytest.raises(InvalidArgument, match="empty list"):
        CompletionRequest(prompt=[]).prompts()
    with pytest.raises(InvalidArgument, match="best_of"):
        CompletionRequest(prompt="a", best_of=3).prompts()


def test_chat_max_completion_tokens_wins_over_max_tokens() -> None:
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert body.token_limit == 9


def test_default_chat_template_writes_turns_and_asks_the_assistant() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Translate to French: cat"},
    ]
    prompt = ChatTemplate().render(messages)
    assert prompt == "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Translate to French: cat\nAssistant:"
    assert not ChatTemplate().render(messages[1:2], add_generation_prompt=False).endswith("Assistant:")


def test_custom_chat_template_and_its_errors() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "<s>"
    )
    assert template.render([{"role": "user", "content": "x"}]) == "<s><user>x"
    failing = ChatTemplate("{{ raise_exception('only one user turn') }}")
    with pytest.raises(InvalidArgument, match="only one user turn"):
        failing.render([{"role": "user", "content": "x"}])
    with pytest.raises(InvalidArgument, match="messages must not be empty"):
        ChatTemplate().render([])


def test_message_content_parts_are_joined() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]
        }
    )
    assert body.messages[0].text() == "ab"


def test_validation_messages_name_the_field() -> None:
    message, param = validation_message([{"loc": ("body", "messages"), "msg": "Field required"}])
    assert message == "messages: Field required" and param == "messages"
    assert (
        validation_message([{"type": "json_invalid", "loc": ("body", 0)}])[0]
        == "request body is not valid JSON"
    )


def test_key_file_parsing_and_bearer_headers() -> None:
    assert parse_keys("a\n\n  b  \n# comment\n") == frozenset({"a", "b"})
    assert bearer_token("Bearer k1") == "k1" and bearer_token("bearer  k1 ") == "k1"
    assert bearer_token("Basic k1") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
    assert key_accepted("a", frozenset({"a", "b"})) and not key_accepted("c", frozenset({"a"}))
    assert not key_accepted(None, frozenset({"a"}))


def test_api_keys_follow_the_file_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("old\n")
    keys = ApiKeys(str(path))
    keys.check("Bearer old")
    # Kubernetes swaps a mounted Secret's files by renaming a new one into place.
    fresh = tmp_path / "keys.new"
    fresh.write_text("new\n")
    os.replace(fresh, path)
    keys.check("Bearer new")
    with pytest.raises(Unauthenticated, match="invalid API key"):
        keys.check("Bearer old")
    with pytest.raises(Unauthenticated, match="missing API key"):
        keys.check(None)
    path.unlink()  # a broken Secret refuses everything rather than opening the service
    with pytest.raises(Unauthenticated):
        keys.check("Bearer new")


def test_api_keys_from_a_mounted_secret_directory(tmp_path: Path) -> None:
    # The layout kubelet writes: visible names link into a dot-named data folder, swapped on update.
    data = tmp_path / "..2026_data"
    data.mkdir()
    (data / "alice").write_text("key-a")
    (data / "bloomz-operator").write_text("key-op\n")
    (tmp_path / "..data").symlink_to(data.name)
    for name in ("alice", "bloomz-operator"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    keys = ApiKeys(str(tmp_path))
    assert keys.keys() == frozenset({"key-a", "key-op"})
    fresh = tmp_path / "..2026_data2"
    fresh.mkdir()
    (fresh / "alice").write_text("key-a2")
    (fresh / "bloomz-operator").write_text("key-op\n")
    (tmp_path / "..data.tmp").symlink_to(fresh.name)
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")
    assert keys.keys() == frozenset({"key-a2", "key-op"})


def test_chat_template_flag_takes_a_file_or_the_template_itself(tmp_path: Path) -> None:
    from bloomz_runtime.http.chat import load_chat_template

    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    messages = [{"role": "user", "content": "x"}]
    assert load_chat_template(str(path)).render(messages) == "[x]"
    assert load_chat_template("{{ messages[0].content }}!").render(messages) == "x!"
    assert load_chat_template(None).render(messages) == "User: x\nAssistant:"
    with pytest.raises(FileNotFoundError):
        load_chat_template(str(tmp_path / "missing.jinja"))
