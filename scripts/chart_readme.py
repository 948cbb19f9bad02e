"""Generate the chart's README.md from values.yaml: every value documented with a `# --` comment becomes a
row (key, type, default, description), in file order, like helm-docs does.

`python scripts/chart_readme.py` writes charts/bloomz-operator/README.md (scripts/sync-chart.sh runs it);
`--check` exits non-zero when the committed README differs (tests/packaging checks it too).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "bloomz-operator"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?: |$)")
_DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
_DOC_MORE = re.compile(r"^ *# ?(?P<text>.*)$")


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment, in file order."""
    rows: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    doc: list[str] | None = None
    for line in values_text.splitlines():
        if (start := _DOC_START.match(line)) is not None:
            doc = [start["text"].strip()]
            continue
        if doc is not None and line.lstrip().startswith("#"):
            more = _DOC_MORE.match(line)
            doc.append(more["text"].strip() if more else "")
            continue
        key = _KEY.match(line)
        if key is None:
            if not line.strip():
                doc = None
            continue
        indent = len(key["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key["key"]))
        if doc is not None:
            rows.append((".".join(k for _, k in path), " ".join(t for t in doc if t)))
            doc = None
    return rows


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _type(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string"), (list, "list")):
        if isinstance(value, kind):
            return name
    return "object" if isinstance(value, dict) else "null"


def render(values_text: str, chart: dict[str, Any]) -> str:
    values = yaml.safe_load(values_text)
    lines = [
        f"# {chart['name']}",
        "",
        f"{' '.join(str(chart.get('description', '')).split())}",
        "",
        f"Chart version {chart['version']}, app version {chart['appVersion']}, Kubernetes "
        f"`{chart.get('kubeVersion', 'any')}`. The project's docs/cluster.md walks through an install.",
        "",
        "The CRD comes from the chart's `crds/` folder: Helm installs it but never upgrades or deletes it",
        "(`kubectl apply --server-side -f crds/` upgrades it).",
        "",
        "<!-- Generated from values.yaml by scripts/chart_readme.py: edit the `# --` comments there. -->",
        "",
        "## Values",
        "",
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
    ]
    for key, description in documented_keys(values_text):
        value = _lookup(values, key)
        default, text = (t.replace("|", r"\|") for t in (json.dumps(value), description))
        lines.append(f"| `{key}` | {_type(value)} | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed README is stale")
    args = parser.parse_args(argv)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = render((CHART / "values.yaml").read_text(), chart)
    readme = CHART / "README.md"
    if args.check:
        if not readme.exists() or readme.read_text() != text:
            print(f"{readme} is stale: run `make chart-sync`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    print(f"[chart-readme] {readme.relative_to(ROOT)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
