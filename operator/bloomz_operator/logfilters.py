"""Log hygiene for the operator process.

Kopf logs "Timer '<id>' succeeded." at INFO every time a timer runs: the latency check (every 10 s)
and the periodic reconcile (every 15 s) of every resource. Those lines outnumber everything else in
`kubectl logs` by far and say nothing; a timer that fails is still logged (as a warning or error),
and DEBUG keeps them all.
"""

from __future__ import annotations

import logging
import re

KOPF_OBJECTS_LOGGER = "kopf.objects"
_ROUTINE_SUCCESS = re.compile(r"^Timer '[^']*' succeeded\.$")


def is_routine_timer_success(record: logging.LogRecord) -> bool:
    return record.levelno == logging.INFO and bool(_ROUTINE_SUCCESS.match(record.getMessage()))


class RoutineTimerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_routine_timer_success(record)


def install(level: str) -> None:
    """Drop routine timer successes unless the operator logs at DEBUG."""
    logger = logging.getLogger(KOPF_OBJECTS_LOGGER)
    if level != "DEBUG" and not any(isinstance(f, RoutineTimerFilter) for f in logger.filters):
        logger.addFilter(RoutineTimerFilter())
