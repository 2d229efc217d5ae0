"""Version numbering (integer and semantic), the rollback step, approval deadlines and the audit chain: pure
functions, each tested on its own.

The promotion gate lives in ``driftloop.services.registry.gate``. REST
promotions and event-driven promotions both end in ``store.promote``; what
differs is only who decided (the gate or an operator), which the audit log
records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


def next_version(existing: Iterable[int]) -> int:
    """Versions count up from 1 per model and are never reused.

    >>> next_version([]), next_version([1, 3])
    (1, 4)
    """
    return max(existing, default=0) + 1


#: The audit fields a row's hash covers, in the order they are hashed.
AUDIT_FIELDS = (
    "at",
    "actor",
    "actor_role",
    "action",
    "model_name",
    "version",
    "previous_version",
    "reason",
    "correlation_id",
    "decision",
)


def audit_digest(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 over the previous row's hash and this row's content, as canonical JSON.

    Times are hashed as UTC ISO strings to the microsecond, so a row reads
    back to the same hash on SQLite (naive) and PostgreSQL alike.

    >>> from datetime import datetime
    >>> row = {"at": datetime(2026, 1, 1), "actor": "alice", "action": "promoted", "version": 2}
    >>> audit_digest("", row) == audit_digest("", {**row, "at": datetime(2026, 1, 1, tzinfo=UTC)})
    True
    >>> audit_digest("", row) == audit_digest("", {**row, "version": 3})
    False
    """
    content = {name: _canonical(fields.get(name)) for name in AUDIT_FIELDS}
    payload = json.dumps({"prev": prev_hash, "row": content}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    return value


@dataclass(frozen=True)
class ChainLink:
    """One audit row as the chain check sees it; the hashes are None on rows from before the chain."""

    id: int
    fields: Mapping[str, Any]
    prev_hash: str | None
    row_hash: str | None


@dataclass(frozen=True)
class ChainReport:
    checked: int
    unchained: int
    broken_at: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify_chain(links: Iterable[ChainLink], head: str | None) -> ChainReport:
    """Walk the rows in id order; name the first whose hash or link is wrong.

    Rows written before the chain existed (no hashes) may only come first.
    ``head`` is the hash the registry last appended, so removing the newest
    rows is caught too.

    >>> from datetime import datetime
    >>> a = {"at": datetime(2026, 1, 1), "actor": "gate", "action": "promoted"}
    >>> h1 = audit_digest("", a)
    >>> h2 = audit_digest(h1, {**a, "action": "rolled_back"})
    >>> rows = [ChainLink(1, a, "", h1), ChainLink(2, {**a, "action": "rolled_back"}, h1, h2)]
    >>> verify_chain(rows, h2).intact
    True
    >>> verify_chain([rows[0], ChainLink(2, {**a, "actor": "mallory", "action": "rolled_back"}, h1, h2)], h2)
    ChainReport(checked=2, unchained=0, broken_at=2, problem='its content does not match its hash')
    """
    previous: str | None = None
    checked = unchained = 0
    for link in links:
        checked += 1
        if link.row_hash is None or link.prev_hash is None:
            if previous is not None:
                return ChainReport(checked, unchained, link.id, "it has no hash, after chained rows")
            unchained += 1
            continue
        if link.prev_hash != (previous or ""):
            return ChainReport(checked, unchained, link.id, "it does not link to the row before it")
        if audit_digest(link.prev_hash, link.fields) != link.row_hash:
            return ChainReport(checked, unchained, link.id, "its content does not match its hash")
        previous = link.row_hash
    if (previous or "") != (head or ""):
        return ChainReport(checked, unchained, 0, "the newest rows are missing: the chain ends before its head")
    return ChainReport(checked, unchained)


def rollback_target(current: int, history: Mapping[int, str]) -> int | None:
    """The previous champion: the newest version below ``current`` that was champion and was not rolled back.

    ``history`` maps each version to its status; a version replaced as
    champion is ``archived``, one rolled back from is ``rolled_back``. So
    rolling back again goes one further step back, never forward.

    >>> history = {1: "archived", 2: "archived", 3: "rejected", 4: "champion"}
    >>> rollback_target(4, history)
    2
    >>> rollback_target(2, {**history, 4: "rolled_back", 2: "champion"})
    1
    >>> rollback_target(1, {1: "champion", 2: "rolled_back"}) is None
    True
    """
    earlier = [v for v, status in history.items() if v < current and status == "archived"]
    return max(earlier, default=None)


@dataclass(frozen=True)
class Lineage:
    """What a version was built from, as far as its semantic version cares: its features and its dataset's shape."""

    semver: str | None
    feature_names: Sequence[str] | None
    schema_fingerprint: str | None


def next_semver(previous: Lineage | None, feature_names: Sequence[str], schema_fingerprint: str) -> str:
    """The semantic version of a new version, from the one registered before it.

    A different feature set or dataset schema is a major bump (a consumer of
    the model must change what it sends); a retrain on new data with the same
    inputs is a minor one. A previous version recorded before semantic
    versions (no semver, features or fingerprint) counts as 1.0.0 with
    unknown inputs, so the next is 2.0.0: nothing says its inputs are the same.

    >>> next_semver(None, ["x", "y"], "s1")
    '1.0.0'
    >>> next_semver(Lineage("1.3.0", ["x", "y"], "s1"), ["y", "x"], "s1")
    '1.4.0'
    >>> before = Lineage("1.3.0", ["x"], "s1")
    >>> next_semver(before, ["x", "y"], "s1"), next_semver(before, ["x"], "s2")
    ('2.0.0', '2.0.0')
    >>> next_semver(Lineage(None, None, None), ["x"], "s1")
    '2.0.0'
    """
    if previous is None:
        return "1.0.0"
    major, minor, _ = (int(part) for part in (previous.semver or "1.0.0").split("."))
    same_inputs = (
        previous.feature_names is not None
        and sorted(previous.feature_names) == sorted(feature_names)
        and previous.schema_fingerprint == schema_fingerprint
    )
    return f"{major}.{minor + 1}.0" if same_inputs else f"{major + 1}.0.0"


def approval_overdue(awaiting_since: datetime, now: datetime, timeout: timedelta | None) -> bool:
    """Whether a version has waited for a person longer than ``timeout`` (None: never overdue).

    >>> start = datetime(2026, 1, 1, tzinfo=UTC)
    >>> approval_overdue(start, start + timedelta(hours=2), timedelta(hours=1)), approval_overdue(start, start, None)
    (True, False)
    >>> approval_overdue(datetime(2026, 1, 1), start + timedelta(minutes=30), timedelta(hours=1))
    False
    """
    if timeout is None:
        return False
    since = awaiting_since if awaiting_since.tzinfo else awaiting_since.replace(tzinfo=UTC)
    return now - since >= timeout


#: Aliases the loop moves itself; people set any other name.
SYSTEM_ALIASES = frozenset({"champion", "challenger"})

#: An operator alias: a letter, then letters, digits, ``-`` or ``_``; as MLflow clients accept them.
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
