"""Which failures heal by waiting and which records can never succeed, decided without any I/O.

A consumer that dead-letters whatever fails turns a two-second database
restart into lost work, and one that retries whatever fails re-reads a bad
record forever. So every error is sorted once, here, into three kinds:

- ``retry``: a dependency is unavailable (broker, database, object store, the
  disk). The record is fine; waiting and trying again, for as long as it
  takes, is the only right answer.
- ``poison``: the record itself is bad (a ``PoisonMessage``, a validation
  error, undecodable bytes). No retry can help: dead-letter it with the reason.
- ``fault``: anything else, most likely a bug met by one record. It gets a few
  attempts; if it keeps failing, the record that causes it is found (a batch
  is split in halves) and dead-lettered so the others go on.

The consumer loop (``driftloop.bus.consumer``), which the stateful stages
of ``driftloop.streams`` run on as well, applies the verdict; ``bisect`` is the splitting, kept
apart from Kafka so it can be tested on plain lists.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiokafka.errors import KafkaError, KafkaTimeoutError, OutOfOrderSequenceNumber, ProducerClosed
from minio.error import InvalidResponseError, S3Error, ServerError
from pydantic import ValidationError
from sqlalchemy import exc as sa
from urllib3.exceptions import HTTPError as Urllib3Error

from driftloop.contracts import FieldError

R = TypeVar("R")

Kind = Literal["retry", "poison", "fault"]

#: S3 error codes that say the service, not the request, is at fault (AWS and MinIO spell them alike).
RETRIABLE_S3_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}
)
#: OSErrors about the thing named rather than the place it lives: waiting does not bring a missing file back.
_PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL})


class PoisonMessage(Exception):
    """A record that can never be handled: dead-letter it at once, without retries."""

    def __init__(self, reason: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []

    @classmethod
    def from_validation(cls, exc: ValidationError) -> PoisonMessage:
        errors = [FieldError(field=".".join(str(p) for p in e["loc"]) or "$", message=e["msg"]) for e in exc.errors()]
        return cls("; ".join(f"{e.field}: {e.message}" for e in errors), errors)


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    #: A short, bounded label for metrics: which dependency (retry), or the exception's class.
    reason: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps (``raise … from``, or raised while handling), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _unavailable(exc: BaseException) -> str | None:
    """Which dependency ``exc`` says is unavailable, or None when it says nothing of the kind."""
    if isinstance(exc, KafkaError):
        # aiokafka marks a send timeout as not retriable, yet it is what a broker that is down produces; and a
        # refused sequence number is what a broker back from a long outage answers, until the bus's new producer
        # (``driftloop.bus.producer``) sends the retry. A send that met the refused producer as it was closed
        # goes out with the new one too.
        lost = isinstance(exc, KafkaTimeoutError | OutOfOrderSequenceNumber | ProducerClosed)
        return "broker" if exc.retriable or lost else None
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return "database"
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError | sa.TimeoutError):
        return "database"
    if isinstance(exc, S3Error):
        return "object_store" if exc.code in RETRIABLE_S3_CODES else None
    if isinstance(exc, ServerError | InvalidResponseError | Urllib3Error):
        return "object_store"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    if isinstance(exc, OSError) and exc.errno not in _PERMANENT_ERRNOS and not isinstance(exc, FileNotFoundError):
        return "io"
    return None


def classify(exc: BaseException) -> Verdict:
    """Sort a handler's error into retry, poison or fault (see the module's docstring).

    Wrapped errors count: a ``RuntimeError`` raised from a dropped database
    connection is a retry. An explicit ``PoisonMessage`` wins over everything.

    >>> classify(ConnectionRefusedError(111, "refused"))
    Verdict(kind='retry', reason='connection')
    >>> classify(PoisonMessage("label out of range")).kind
    'poison'
    >>> classify(KeyError("x"))
    Verdict(kind='fault', reason='KeyError')
    """
    chain = list(_chain(exc))
    if any(isinstance(e, PoisonMessage) for e in chain):
        return Verdict("poison", "poison")
    for error in chain:
        if dependency := _unavailable(error):
            return Verdict("retry", dependency)
    if isinstance(exc, ValidationError | json.JSONDecodeError | UnicodeDecodeError):
        return Verdict("poison", type(exc).__name__)
    return Verdict("fault", type(exc).__name__)


def poison_of(exc: BaseException) -> PoisonMessage:
    """The dead-letter reason for an error that ended a record: its own, or the handler's failure."""
    for error in _chain(exc):
        if isinstance(error, PoisonMessage):
            return error
    if isinstance(exc, ValidationError):
        return PoisonMessage.from_validation(exc)
    return PoisonMessage(f"handler failed: {exc!r}")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): doubling from ``base``, never past ``cap``.

    >>> [backoff_delay(n, 0.5, 4.0) for n in range(1, 7)]
    [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    """
    # The exponent is bounded so a retry that has gone on for days does not overflow a float.
    return min(cap, base * 2.0 ** min(attempt - 1, 60))


async def bisect(
    items: list[R],
    handle: Callable[[list[R]], Awaitable[list[tuple[R, PoisonMessage]]]],
    retry_alone: Callable[[R, BaseException], Awaitable[PoisonMessage | None]],
) -> list[tuple[R, PoisonMessage]]:
    """Handle ``items`` as one batch; when that fails with a fault, split it to find the items that cause it.

    ``handle`` returns the items it rejected itself. A half that succeeds is
    done; a single item that still fails goes to ``retry_alone``, which gives
    it its last attempts and returns why it is rejected (None: it succeeded).
    Retriable errors are raised at once: no split can help while a dependency
    is down, and the caller retries the whole batch later. An item's
    handling must be idempotent, since one in a failing half is handled again.
    """
    try:
        return await handle(items)
    except Exception as exc:
        verdict = classify(exc)
        if verdict.kind == "retry":
            raise
        if len(items) == 1:
            if verdict.kind == "poison":
                return [(items[0], poison_of(exc))]
            rejected = await retry_alone(items[0], exc)
            return [] if rejected is None else [(items[0], rejected)]
    middle = len(items) // 2
    return [
        *await bisect(items[:middle], handle, retry_alone),
        *await bisect(items[middle:], handle, retry_alone),
    ]
