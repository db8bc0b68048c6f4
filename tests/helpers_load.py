"""Wall-clock bounds that hold on a busy machine.

No test asserts a speed; a few bound a wait so that a hang or a missed timeout fails the test (a peer that
died is noticed before the transport timeout, a refusal comes before any work). Those bounds and the
timeouts they are compared with are written for a quiet machine and stretched here by how busy it is now:
the larger of the 1- and 5-minute load averages per usable core (at least 1), doubled under CI (its
runners are shared and noisy). On a quiet desk machine the factor is 1 and every bound is as strict as
written. COMET_TEST_SLOWDOWN=<factor> sets it by hand (e.g. 1 to check the quiet bounds, 10 on a
laptop on battery).
"""

from __future__ import annotations

import os


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def slowdown() -> float:
    """How much longer than on a quiet machine a wait may take now (>= 1; read afresh at each call)."""
    forced = os.environ.get("COMET_TEST_SLOWDOWN")
    if forced:
        return max(1.0, float(forced))
    one, five, _ = os.getloadavg()
    factor = max(1.0, max(one, five) / cores())
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return factor * (2.0 if ci else 1.0)


def scaled(seconds: float) -> float:
    """`seconds` (a bound or timeout that suffices on a quiet machine) stretched to the present load."""
    return seconds * slowdown()
