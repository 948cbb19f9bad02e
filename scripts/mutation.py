"""Mutation score of the pure modules (`make mutation`; not part of `make test`: it takes tens of minutes).

mutmut 3 imports mutated code from `mutants/`, `mutants/src` or `mutants/source` only, and names a
mutant after the file's path with a leading `src.` removed. The packages live under two roots
(`operator/`, `runtime/`), so each module is run in a staged copy of the tree (under
`.cache/mutation/<module>/`) where every package sits in `src/`. There mutmut mutates that one
module and runs only its fast unit tests (the table below); `[tool.mutmut]` in pyproject.toml holds
the settings shared by all modules.

    python scripts/mutation.py                 # every module, one after another
    python scripts/mutation.py text sampling   # some of them
    python scripts/mutation.py --list          # the table: module, source, tests

Per module it prints mutants, killed (a timeout or a type-check catch counts as killed), survived,
the score, and each surviving mutant's diff, marked when docs/testing.md lists it as equivalent.
The exit status is 1 when a module scores under the target. Run it under
`flock /tmp/bloomz-heavy.lock nice -n 10` on shared machines.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("operator", "runtime", "sandbox", "api")  # folders that hold top-level packages
STAGE_ROOT = ROOT / ".cache" / "mutation"
TESTING_DOC = ROOT / "docs" / "testing.md"
TARGET = 0.90
KILLED = {"killed", "timeout", "caught by type check"}
TEXT_KEYWORDS = {"help", "description", "epilog", "metavar"}


@dataclass(frozen=True)
class Module:
    name: str
    source: str  # path under a source root, e.g. bloomz_operator/spec.py
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # only these functions' mutants (empty: the whole module)


OP, RT = "tests/operator/test_", "tests/runtime/test_"
MODULES = (
    Module("spec", "bloomz_operator/spec.py", (OP + "operator_crd.py", OP + "spec_fields.py")),
    Module(
        "builders",
        "bloomz_operator/builders.py",
        (
            OP + "operator_builders.py",
            OP + "operator_multinode.py",
            OP + "spec_fields.py",
            OP + "builders_objects.py",
            OP + "operator_podsecurity.py",
            OP + "operator_access.py",  # API keys and TLS: the volumes, flags and HTTPS probes
        ),
    ),
    Module(
        "groups",
        "bloomz_operator/groups.py",
        (
            OP + "operator_multinode.py",
            OP + "builders_objects.py",
            OP + "replicas.py",
            OP + "operator_builders.py",  # single-node replicas are built here too
            OP + "operator_access.py",  # the owner's API key Secret named in the template
        ),
    ),
    Module(
        "replicas",
        "bloomz_operator/replicas.py",
        (
            OP + "replicas.py",
            OP + "operator_multinode.py",
            OP + "planning_rollout_sim.py",
            OP + "operator_status.py",
            OP + "status_members.py",
        ),
    ),
    Module(
        "planning",
        "bloomz_operator/planning.py",
        (
            OP + "operator_planning.py",
            OP + "operator_multinode.py",
            OP + "planning_rollout_sim.py",
            OP + "planning_rollout_hold.py",
            OP + "operator_api_faults.py",  # the settings rollout: hold_rollout, RolloutGate
            OP + "replicas.py",
        ),
    ),
    Module(
        "status",
        "bloomz_operator/status.py",
        (OP + "operator_status.py", OP + "operator_multinode.py", OP + "status_members.py"),
    ),
    Module(
        "latency",
        "bloomz_operator/latency.py",
        (OP + "latency_targets.py", OP + "operator_latency.py"),
        # which pods are measured and what is reported; the Benchmark RPCs are side effects
        ("pod_address", "benchmark_targets", "measured_message"),
    ),
    Module(
        "pods",
        "bloomz_operator/pods.py",
        (OP + "pod_views.py", OP + "operator_status.py", OP + "planning_rollout_sim.py"),
    ),
    Module(
        "settings",
        "bloomz_operator/settings.py",
        (
            OP + "operator_settings.py",
            OP + "settings_messages.py",
            # the policy, network, resources and security-context settings
            OP + "operator_policy.py",
            OP + "operator_protection.py",
            OP + "operator_podsecurity.py",
            OP + "operator_resources.py",
            OP + "operator_api_faults.py",  # the api and rollout settings
            OP + "settings_fields.py",
        ),
    ),
    Module(
        "validation",
        "bloomz_runtime/validation.py",
        # the admission tests: the prompt's byte size and the total-token limit
        (RT + "runtime_validation.py", RT + "validation_bounds.py", RT + "runtime_admission.py"),
    ),
    Module(
        "sampling", "bloomz_runtime/sampling.py", (RT + "runtime_batching.py", RT + "sampling_warpers.py")
    ),
    Module(
        "scheduler",
        "bloomz_runtime/scheduler.py",
        (
            RT + "runtime_batching.py",
            RT + "runtime_requests.py",
            RT + "request_lifecycle.py",
            RT + "scheduler_queue.py",
            RT + "runtime_admission.py",  # the prefill budget and the queue's room checks
        ),
    ),
    Module(
        "requests", "bloomz_runtime/requests.py", (RT + "runtime_requests.py", RT + "request_lifecycle.py")
    ),
    Module("text", "bloomz_runtime/text.py", (RT + "runtime_text.py", RT + "text_streaming.py")),
    Module(
        "greedy_head",
        "bloomz_runtime/backends/greedy_head.py",
        (RT + "greedy_head.py", RT + "screen_store.py"),  # the screen store hands a stored screen back in
    ),
    Module(
        "options",
        "bloomz_api/options.py",
        (RT + "runtime_launch.py", RT + "multinode.py", RT + "options_flags.py", RT + "options_values.py"),
    ),
    Module(
        "launch",
        "bloomz_runtime/launch.py",
        (RT + "runtime_launch.py", RT + "multinode.py", RT + "launch_rendering.py", RT + "placement.py"),
        # the command rendering; the supervisor and the shm clean-up are side effects, run by other tests
        (
            "threads_per_rank",
            "forwarded_env_names",
            "rank_environment",
            "serve_program",
            "plan_job",
            "build_command",
        ),
    ),
    Module(
        "mpijob",
        "bloomz_runtime/mpijob.py",
        (RT + "placement.py", RT + "launch_rendering.py", RT + "runtime_launch.py", RT + "multinode.py"),
        # the rendering and placement; detect_mpi_major runs `mpirun --version` (the placement tests run it)
        (
            "hostfile_text",
            "binding_flags",
            "runtime_param_flags",
            "render",
            "socket_shares",
            "hpu_binding",
            "device_binding",
            "parse_mpi_major",
        ),
    ),
    Module("topology", "bloomz_runtime/topology.py", (RT + "placement.py",)),
)
BY_NAME = {m.name: m for m in MODULES}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def mutmut_config(module: Module, shared: dict[str, object]) -> str:
    """The [tool.mutmut] table for one module's staged run: the shared settings plus its file and tests."""
    config = dict(shared)
    config["source_paths"] = ["src"]
    config["only_mutate"] = ["src/" + module.source]
    config["pytest_add_cli_args_test_selection"] = [*module.tests]
    config["use_git_change_detection"] = False  # the staged copy is no git checkout
    return "[tool.mutmut]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items())


def without_table(pyproject: str, table: str) -> str:
    """pyproject.toml's text with one top-level table (its header up to the next header) removed."""
    out, skipping = [], False
    for line in pyproject.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == f"[{table}]"
        if not skipping:
            out.append(line)
    return "".join(out)


def stage(module: Module) -> Path:
    """A fresh copy of the packages (under src/), tests and pyproject.toml for one module's run."""
    where = STAGE_ROOT / module.name
    missing = [t for t in module.tests if not (ROOT / t).is_file()]
    if missing:
        raise SystemExit(f"{module.name}: no such test file {', '.join(missing)}")
    shutil.rmtree(where, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for root in SOURCE_ROOTS:
        for package in sorted((ROOT / root).glob("*/__init__.py")) if (ROOT / root).is_dir() else []:
            shutil.copytree(package.parent, where / "src" / package.parent.name, ignore=ignore)
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    for data in shared.get("also_copy", []):  # mutmut copies these from the staged tree into mutants/
        shutil.copytree(ROOT / data, where / data, ignore=ignore)
    staged = without_table(text, "tool.mutmut") + "\n" + mutmut_config(module, shared)
    (where / "pyproject.toml").write_text(staged)
    return where


def mutant_globs(module: Module) -> list[str]:
    """The mutant names to run: the module's functions, or all of its mutants."""
    dotted = module.source.removesuffix(".py").replace("/", ".")
    if not module.functions:
        return [f"{dotted}.*"]
    return [f"{dotted}.x_{f}__mutmut_*" for f in module.functions]


def parse_results(output: str) -> dict[str, str]:
    """`mutmut results --all true` lines (`    name: status`) as {name: status}."""
    found = {}
    for line in output.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status
    return found


def listed_equivalent(doc: str) -> set[str]:
    """Mutant names docs/testing.md lists (in backticks) as equivalent."""
    return set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", doc))


class _DropText(ast.NodeTransformer):
    """Removes the keyword arguments that are only words for people (argparse's help and the like)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.keywords = [k for k in node.keywords if k.arg not in TEXT_KEYWORDS]
        return self.generic_visit(node)


def text_only(mutated_source: str, names: list[str]) -> set[str]:
    """The mutants (of ``names``) that differ from the original function only in help texts."""
    functions = {
        node.name: node
        for node in ast.walk(ast.parse(mutated_source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }

    def shape(function: str) -> str | None:
        node = functions.get(function)
        if node is None:
            return None
        copy = ast.parse(ast.unparse(node)).body[0]
        assert isinstance(copy, ast.FunctionDef | ast.AsyncFunctionDef)
        copy.name = ""
        return ast.dump(_DropText().visit(copy))

    found = set()
    for name in names:
        function = name.rsplit(".", 1)[-1]
        original = shape(re.sub(r"__mutmut_\d+$", "__mutmut_orig", function))
        if original is not None and shape(function) == original:
            found.add(name)
    return found


def function_sources(source: str) -> dict[str, list[str]]:
    """Every function's lines in a (mutated) source file, by function name."""
    lines = source.splitlines(keepends=True)
    return {
        node.name: lines[node.lineno - 1 : node.end_lineno]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def mutant_diff(functions: dict[str, list[str]], name: str) -> str:
    """A mutant's diff against its original function (what `mutmut show` prints, without starting a
    process per mutant); ``functions`` from `function_sources` of mutmut's mutated file."""
    function = name.rsplit(".", 1)[-1]
    original = re.sub(r"__mutmut_\d+$", "__mutmut_orig", function)
    if function not in functions or original not in functions:
        return f"(no source for {name})"
    before, after = ([line.replace(f, "", 1) for line in functions[f]] for f in (original, function))
    return "".join(list(difflib.unified_diff(before, after, n=1))[2:]).rstrip()


@dataclass(frozen=True)
class Score:
    module: str
    mutants: int  # scored: help-text-only mutants are left out (they change no behaviour)
    killed: int
    equivalent: int  # survivors docs/testing.md lists as equivalent
    text_only: int

    @property
    def score(self) -> float:
        return self.killed / self.mutants if self.mutants else 1.0

    @property
    def unexplained(self) -> int:
        return self.mutants - self.killed - self.equivalent

    def line(self) -> str:
        return (
            f"{self.module:12} mutants {self.mutants:4}  killed {self.killed:4}  score {self.score:6.1%}  "
            f"equivalent {self.equivalent:3}  unexplained {self.unexplained:3}"
            + (f"  (+{self.text_only} help-text-only, not scored)" if self.text_only else "")
        )

    def row(self, date: str) -> str:
        """A row of the results table in docs/testing.md."""
        return (
            f"| {self.module} | {self.mutants} | {self.killed} | {self.score:.1%} | {self.equivalent} "
            f"| {self.unexplained} | {date} |"
        )


def run_module(module: Module, children: int, show_diffs: bool) -> Score:
    where = stage(module)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the staged src/ must win
    # mutmut forks each mutant's run from a process that has run the tests once: a forked child whose
    # parent started OpenMP's thread pool hangs in its first parallel torch op (every greedy_head
    # mutant ran into the timeout). One thread per process starts no pool.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mutmut = [sys.executable, "-m", "mutmut"]
    globs = mutant_globs(module)
    subprocess.run([*mutmut, "run", "--max-children", str(children), *globs], cwd=where, env=env, check=True)
    out = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=where, env=env, check=True, capture_output=True, text=True
    ).stdout
    results = {k: v for k, v in parse_results(out).items() if any(fnmatch.fnmatch(k, g) for g in globs)}
    survivors = [k for k, v in results.items() if v not in KILLED]
    mutated = (where / "mutants" / "src" / module.source).read_text()
    text = text_only(mutated, survivors)
    functions = function_sources(mutated)
    results = {k: v for k, v in results.items() if k not in text}
    equivalent = listed_equivalent(TESTING_DOC.read_text()) if TESTING_DOC.exists() else set()
    score = Score(
        module=module.name,
        mutants=len(results),
        killed=sum(status in KILLED for status in results.values()),
        equivalent=sum(status not in KILLED and name in equivalent for name, status in results.items()),
        text_only=len(text),
    )
    print(score.line())
    for name, status in sorted(results.items()):
        if status in KILLED:
            continue
        note = "listed as equivalent in docs/testing.md" if name in equivalent else "NOT EXPLAINED"
        print(f"  {status}: {name}  ({note})")
        if show_diffs:
            print("    " + "\n    ".join(mutant_diff(functions, name).splitlines()))
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(BY_NAME)}")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    parser.add_argument("--children", type=int, default=2, help="parallel mutant runs (default 2)")
    parser.add_argument("--no-diffs", action="store_true", help="no diffs of surviving mutants")
    args = parser.parse_args(argv)
    unknown = [n for n in args.modules if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in args.modules] or list(MODULES)
    if args.list:
        for m in chosen:
            print(f"{m.name:12} {m.source:40} {' '.join(m.tests)}")
        return 0
    summary = [run_module(m, args.children, not args.no_diffs) for m in chosen]
    today = datetime.date.today().isoformat()
    print(f"\nmutation scores, {today} (target {TARGET:.0%} per module):")
    for score in summary:
        print("  " + score.line())
    print("\nrows for docs/testing.md:")
    for score in summary:
        print(score.row(today))
    return 0 if all(score.score >= TARGET for score in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
