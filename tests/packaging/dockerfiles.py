"""A small Dockerfile reader for the tests: instructions per build stage, ARG defaults, exec-form arrays."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def arg(self, name: str) -> str:
        """The default of ARG name (global or in any stage), with ${OTHER} expanded from global ARGs."""
        values = dict(self.global_args)
        for stage in self.stages:
            values.update(_args(stage.all("ARG")))
        value = values[name]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.arg(m.group(1)), value)

    def entrypoint(self) -> list[str]:
        value = json.loads(self.final.last("ENTRYPOINT"))
        assert isinstance(value, list), "ENTRYPOINT must be in exec form"
        return [str(item) for item in value]

    def exposed_ports(self) -> set[int]:
        return {int(port.split("/")[0]) for line in self.final.all("EXPOSE") for port in line.split()}


def _args(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, _, default = line.partition("=")
        if default:
            out[name.strip()] = default.strip().strip('"')
    return out


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comment lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: list[str] = []
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may precede FROM, got {keyword}"
            global_args.append(rest)
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return Dockerfile(path=path, global_args=_args(global_args), stages=stages)
