"""scripts/mutation.py's pure parts: the staged configuration, result parsing, help-text-only mutants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
assert _spec is not None and _spec.loader is not None
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation_script"] = mutation
_spec.loader.exec_module(mutation)


def test_every_module_and_test_file_exists() -> None:
    for module in mutation.MODULES:
        assert any((ROOT / root / module.source).is_file() for root in ("operator", "runtime", "api")), (
            module.name
        )
        assert all((ROOT / t).is_file() for t in module.tests), module.name


def test_the_staged_config_replaces_the_shared_table() -> None:
    text = "[tool.a]\nx = 1\n\n[tool.mutmut]\nold = true\n\n[tool.b]\ny = 2\n"
    stripped = mutation.without_table(text, "tool.mutmut")
    assert "old" not in stripped and "[tool.a]" in stripped and "[tool.b]" in stripped
    module = mutation.BY_NAME["text"]
    staged = tomllib.loads(
        stripped + mutation.mutmut_config(module, {"also_copy": ["crds"], "timeout_constant": 5.0})
    )
    config = staged["tool"]["mutmut"]
    assert config["only_mutate"] == ["src/bloomz_runtime/text.py"]
    assert config["source_paths"] == ["src"] and config["use_git_change_detection"] is False
    assert config["pytest_add_cli_args_test_selection"] == list(module.tests)
    assert config["also_copy"] == ["crds"] and config["timeout_constant"] == 5.0


def test_mutant_names_and_results() -> None:
    assert mutation.mutant_globs(mutation.BY_NAME["spec"]) == ["bloomz_operator.spec.*"]
    launch = mutation.mutant_globs(mutation.BY_NAME["launch"])
    assert "bloomz_runtime.launch.x_build_command__mutmut_*" in launch and len(launch) == 6
    out = "    bloomz_runtime.text.xǁStopMatcherǁfeed__mutmut_3: survived\n"
    out += "    a.b.x_f__mutmut_1: killed\nnoise\n"
    assert mutation.parse_results(out) == {
        "bloomz_runtime.text.xǁStopMatcherǁfeed__mutmut_3": "survived",
        "a.b.x_f__mutmut_1": "killed",
    }
    doc = "equivalent: `bloomz_runtime.text.xǁStopMatcherǁfeed__mutmut_3` and `a.b.x_g__mutmut_12`, not `x`"
    assert mutation.listed_equivalent(doc) == {
        "bloomz_runtime.text.xǁStopMatcherǁfeed__mutmut_3",
        "a.b.x_g__mutmut_12",
    }


def test_help_text_only_mutants_are_told_apart() -> None:
    source = """
def x_f__mutmut_orig(p):
    p.add_argument("--a", default=1, help="words")
def x_f__mutmut_1(p):
    p.add_argument("--a", default=1, help="XXwordsXX")
def x_f__mutmut_2(p):
    p.add_argument("--a", default=1, )
def x_f__mutmut_3(p):
    p.add_argument("--a", default=2, help="words")
def x_f__mutmut_4(p):
    p.add_argument("--b", default=1, help="words")
"""
    names = [f"m.x_f__mutmut_{i}" for i in range(1, 5)]
    assert mutation.text_only(source, names) == {"m.x_f__mutmut_1", "m.x_f__mutmut_2"}


def test_the_score_leaves_out_nothing_but_help_text() -> None:
    score = mutation.Score("m", mutants=20, killed=18, equivalent=1, text_only=3)
    assert score.score == 0.9 and score.unexplained == 1
    assert score.row("2026-12-01") == "| m | 20 | 18 | 90.0% | 1 | 1 | 2026-12-01 |"


def test_a_mutants_diff_is_read_from_the_mutated_file() -> None:
    source = """
class C:
    def xǁCǁm__mutmut_orig(self, a):
        b = a + 1
        return b * 2
    def xǁCǁm__mutmut_1(self, a):
        b = a - 1
        return b * 2
"""
    functions = mutation.function_sources(source)
    diff = mutation.mutant_diff(functions, "pkg.mod.xǁCǁm__mutmut_1").splitlines()
    assert [line.replace(" ", "") for line in diff if line[:1] in "+-"] == ["-b=a+1", "+b=a-1"]
    missing = "pkg.mod.xǁCǁm__mutmut_9"
    assert mutation.mutant_diff(functions, missing) == f"(no source for {missing})"
