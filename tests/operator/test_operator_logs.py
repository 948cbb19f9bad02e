"""Routine Kopf timer successes stay out of the operator log (below DEBUG); everything else stays in."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from bloomz_operator import logfilters


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(logfilters.KOPF_OBJECTS_LOGGER, level, __file__, 1, message, None, None)


def test_only_info_timer_successes_are_routine() -> None:
    assert logfilters.is_routine_timer_success(
        record("Timer 'register_handlers.<locals>.measure_latency' succeeded.")
    )
    assert not logfilters.is_routine_timer_success(record("Handler 'on_create' succeeded."))
    assert not logfilters.is_routine_timer_success(record("Timer 'x' failed with an exception. Will retry."))
    assert not logfilters.is_routine_timer_success(record("Timer 'x' succeeded.", logging.WARNING))


@pytest.fixture
def kopf_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(logfilters.KOPF_OBJECTS_LOGGER)
    saved = list(logger.filters)
    yield logger
    logger.filters = saved


@pytest.mark.parametrize(("level", "kept"), [("INFO", 2), ("DEBUG", 3)])
def test_install_filters_the_kopf_object_logger(
    kopf_logger: logging.Logger, caplog: pytest.LogCaptureFixture, level: str, kept: int
) -> None:
    logfilters.install(level)
    logfilters.install(level)  # idempotent: one filter
    assert sum(isinstance(f, logfilters.RoutineTimerFilter) for f in kopf_logger.filters) == (
        level != "DEBUG"
    )
    with caplog.at_level(logging.INFO, logger=logfilters.KOPF_OBJECTS_LOGGER):
        kopf_logger.info("Timer 'periodic_reconcile' succeeded.")
        kopf_logger.info("created pod bloomz-tiny-0")
        kopf_logger.warning("Timer 'measure_latency' failed temporarily: no ready pod.")
    assert len(caplog.records) == kept
