"""Pure timing rules that keep many resources from acting in lockstep: retry backoff and jitter.

A failed pass is retried after an exponentially growing, randomised delay (a flapping API server is not
hammered by every resource at the same instant); periodic work (reconcile passes, latency checks, hourly
benchmarks) is spread with jitter so 500 resources created together do not fire together forever.
The random part is an argument (`rand` in [0, 1)), so every rule is testable without a clock or a seed.
"""

from __future__ import annotations

import hashlib

# How far periodic work is spread around its interval (+-10 %).
JITTER_FRACTION = 0.1


def backoff_delay(failures: int, *, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after `failures` consecutive failed attempts (>= 1): the ceiling doubles per failure
    from `base` up to `cap`, and the delay is drawn from its upper half ("equal jitter": spread, yet never
    a tight loop)."""
    if failures < 1:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 62))
    return ceiling / 2.0 + ceiling / 2.0 * rand


def jittered(interval: float, rand: float, fraction: float = JITTER_FRACTION) -> float:
    """`interval` moved by up to +-`fraction` of itself."""
    return interval * (1.0 + fraction * (2.0 * rand - 1.0))


def stable_fraction(*keys: str) -> float:
    """A number in [0, 1) fixed by `keys` (e.g. a resource uid and a time): jitter that every operator
    restart computes the same, so a persisted schedule does not move when the operator restarts."""
    digest = hashlib.sha256("\0".join(keys).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
