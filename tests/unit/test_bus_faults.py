"""Errors sorted into retry, poison and fault; a failing batch split until the records that break it are found."""

from __future__ import annotations

import errno
import json

import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    UnsupportedVersionError,
)
from minio.error import S3Error, ServerError
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError
from urllib3.exceptions import MaxRetryError, NewConnectionError

from driftloop.bus.faults import PoisonMessage, Verdict, backoff_delay, bisect, classify, poison_of


def _s3_error(code: str) -> S3Error:
    return S3Error(None, code, "message", "resource", "request-id", "host-id")  # type: ignore[arg-type]


def _validation_error() -> ValidationError:
    class Model(BaseModel):
        x: int

    try:
        Model.model_validate({"x": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validated")


def _wrapped(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (KafkaConnectionError("broker down"), "broker"),
        (NotLeaderForPartitionError(), "broker"),
        (KafkaTimeoutError(), "broker"),
        (OutOfOrderSequenceNumber(), "broker"),
        (ProducerClosed(), "broker"),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), "database"),
        (_s3_error("ServiceUnavailable"), "object_store"),
        (_s3_error("SlowDown"), "object_store"),
        (ServerError("502 bad gateway", 502), "object_store"),
        (MaxRetryError(None, "/bucket/key", reason=NewConnectionError(None, "refused")), "object_store"),  # type: ignore[arg-type]
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection"),
        (TimeoutError(), "timeout"),
        (OSError(errno.ENOSPC, "no space left on device"), "io"),
        (PermissionError(errno.EACCES, "permission denied"), "io"),
        (_wrapped(RuntimeError("could not store the run"), ConnectionResetError()), "connection"),
    ],
)
def test_an_unavailable_dependency_is_retried(error: Exception, reason: str) -> None:
    assert classify(error) == Verdict("retry", reason)


@pytest.mark.parametrize(
    "error",
    [
        PoisonMessage("label out of range"),
        _validation_error(),
        json.JSONDecodeError("Expecting value", "{", 1),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        # A record found bad while the database was also down is still bad: retrying cannot mend it.
        _wrapped(PoisonMessage("no such model"), OperationalError("SELECT 1", {}, Exception("gone"))),
    ],
)
def test_a_bad_record_is_poison(error: Exception) -> None:
    assert classify(error).kind == "poison"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("bug"),
        KeyError("missing"),
        ZeroDivisionError(),
        FileNotFoundError(errno.ENOENT, "no such artifact"),
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        _s3_error("NoSuchBucket"),
        UnsupportedVersionError(),
        CommitFailedError("rebalanced"),
    ],
)
def test_anything_else_is_a_fault(error: Exception) -> None:
    assert classify(error) == Verdict("fault", type(error).__name__)


def test_the_dead_letter_reason_is_the_records_own_or_the_handlers_failure() -> None:
    own = PoisonMessage("label out of range")
    assert poison_of(_wrapped(ValueError("while scoring"), own)) is own
    assert {e.field for e in poison_of(_validation_error()).errors} == {"x"}
    assert poison_of(RuntimeError("bug")).reason == "handler failed: RuntimeError('bug')"


def test_backoff_doubles_up_to_its_cap_and_survives_a_long_outage() -> None:
    assert [backoff_delay(n, 0.25, 2.0) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert backoff_delay(100_000, 0.25, 30.0) == 30.0


class Handler:
    """A batch handler that fails with ``error`` on any batch holding one of ``bad``, and records its calls."""

    def __init__(self, bad: set[int], error: Exception, rejects: set[int] | None = None) -> None:
        self.bad = bad
        self.error = error
        self.rejects = rejects or set()
        self.calls: list[list[int]] = []
        self.done: list[int] = []

    async def __call__(self, items: list[int]) -> list[tuple[int, PoisonMessage]]:
        self.calls.append(items)
        if self.bad & set(items):
            raise self.error
        self.done.extend(i for i in items if i not in self.rejects)
        return [(i, PoisonMessage(f"{i} rejected")) for i in items if i in self.rejects]


async def _give_up(item: int, error: BaseException) -> PoisonMessage | None:
    return PoisonMessage(f"{item} failed: {error!r}")


async def test_bisect_finds_the_records_that_break_a_batch_and_handles_the_rest() -> None:
    handler = Handler(bad={3, 6}, error=RuntimeError("predictor crashed"), rejects={0})
    rejected = await bisect(list(range(8)), handler, _give_up)
    assert [(item, poison.reason) for item, poison in rejected] == [
        (0, "0 rejected"),
        (3, "3 failed: RuntimeError('predictor crashed')"),
        (6, "6 failed: RuntimeError('predictor crashed')"),
    ]
    assert sorted(handler.done) == [1, 2, 4, 5, 7]
    # Halves that succeed are not split further: 8 -> 4+4 -> 2+2+2+2 -> the two halves with a bad item.
    assert handler.calls[:3] == [list(range(8)), [0, 1, 2, 3], [0, 1]]
    assert len(handler.calls) == 11


async def test_bisect_of_a_batch_that_fails_as_poison_dead_letters_only_the_poison() -> None:
    handler = Handler(bad={2}, error=PoisonMessage("unknown model"))
    rejected = await bisect([1, 2, 3], handler, _give_up)
    assert [(item, poison.reason) for item, poison in rejected] == [(2, "unknown model")]
    assert sorted(handler.done) == [1, 3]


async def test_bisect_gives_a_lone_failing_record_its_last_attempts() -> None:
    handler = Handler(bad={5}, error=RuntimeError("flaky"))

    async def succeed_on_retry(item: int, error: BaseException) -> PoisonMessage | None:
        handler.bad.clear()
        assert await handler([item]) == []
        return None

    assert await bisect([4, 5], handler, succeed_on_retry) == []
    assert sorted(handler.done) == [4, 5]


async def test_bisect_does_not_split_while_a_dependency_is_down() -> None:
    handler = Handler(bad={3}, error=OperationalError("INSERT", {}, Exception("connection refused")))
    with pytest.raises(OperationalError):
        await bisect(list(range(8)), handler, _give_up)
    assert handler.calls == [list(range(8))]
