"""Version numbering: a pure function, so the registry's one numbering rule is tested on its own.

The promotion gate lives in ``driftloop.services.registry.gate``. REST
promotions and event-driven promotions both end in ``store.promote``; what
differs is only who decided (the gate or an operator), which the audit log
records.
"""

from __future__ import annotations

from collections.abc import Iterable


def next_version(existing: Iterable[int]) -> int:
    """Versions count up from 1 per model and are never reused.

    >>> next_version([]), next_version([1, 3])
    (1, 4)
    """
    return max(existing, default=0) + 1
