"""Handler registration: what the operator reacts to, with intervals taken from the settings."""

from __future__ import annotations

from dataclasses import replace

import kopf
from bloomz_operator.handlers import register_handlers
from bloomz_operator.settings import BenchmarkSettings, Settings


def registered(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register_handlers(registry, settings, api_factory=lambda: None)
    return registry


def spawning_ids(registry: kopf.OperatorRegistry) -> dict[str, float | None]:
    return {h.id: getattr(h, "interval", None) for h in registry._spawning.get_all_handlers()}  # type: ignore[attr-defined]


def test_timers_use_the_settings_intervals() -> None:
    settings = replace(
        Settings(), reconcile_interval_seconds=7.0, benchmark=BenchmarkSettings(check_interval_seconds=3.0)
    )
    # The reconciliation is a daemon (woken by pod changes, else every interval), the latency a timer.
    assert spawning_ids(registered(settings)) == {"reconcile": None, "latency": 3.0}


def test_no_latency_timer_when_benchmarks_are_off() -> None:
    settings = replace(Settings(), benchmark=BenchmarkSettings(enabled=False))
    assert spawning_ids(registered(settings)) == {"reconcile": None}


def test_change_handlers_and_activities() -> None:
    registry = registered(Settings())
    changing = {h.id for h in registry._changing.get_all_handlers()}  # type: ignore[attr-defined]
    assert {"cleanup"} <= changing
    assert any(i.startswith("spec-change") for i in changing)
    watching = {h.id for h in registry._watching.get_all_handlers()}  # type: ignore[attr-defined]
    assert watching == {"pod-change"}
    activities = {h.id for h in registry._activities.get_all_handlers()}  # type: ignore[attr-defined]
    assert activities == {"configure", "login"}
