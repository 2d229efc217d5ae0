"""``driftloop deadletters list|replay`` against a real broker: filters choose letters, replay restores records."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from driftloop.bus import Bus
from driftloop.cli.main import app
from driftloop.contracts import DeadLetter, LabelEvent, RetrainRequested, utcnow
from driftloop.settings import DriftloopSettings
from tests.support import read_topic


async def _publish(settings: DriftloopSettings, letters: list[DeadLetter]) -> None:
    bus = Bus(settings, "test")
    await bus.start()
    try:
        await bus.publish_many([(letter, letter.key) for letter in letters])
    finally:
        await bus.stop()


def test_list_filters_letters_and_replay_republishes_the_original_records(
    settings: DriftloopSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = RetrainRequested(model_name="churn", reason="manual", requested_by="ops")
    label = LabelEvent(event_id="e-1", label=1)
    now = utcnow()
    letters = [
        DeadLetter(
            source_topic="training.requests",
            partition=0,
            offset=7,
            key="churn",
            payload=request.model_dump_json(),
            headers={"ce_id": request.event_id, "ce_type": request.EVENT_TYPE},
            reason="handler failed 4 times: RuntimeError('model churn unknown')",
            stage="training.training.requests",
            original_event_id=request.event_id,
            occurred_at=now,
        ),
        DeadLetter(
            source_topic="labels",
            key="e-1",
            payload=label.model_dump_json(),
            reason="label: out of range",
            stage="ingestion.labels",
            occurred_at=now - timedelta(days=2),
        ),
        DeadLetter(
            source_topic="training.requests",
            key="churn",
            payload='{"model_name": "churn", "reason": "man',
            payload_truncated=True,
            reason="record of 2000000 bytes is over max_record_bytes",
            stage="training.training.requests",
            occurred_at=now,
        ),
    ]
    asyncio.run(_publish(settings, letters))
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", settings.bootstrap)
    monkeypatch.setenv("DRIFTLOOP_TOPIC_PREFIX", settings.topic_prefix)
    runner = CliRunner()

    everything = runner.invoke(app, ["deadletters", "list"], env={"COLUMNS": "400"})
    assert everything.exit_code == 0, everything.output
    assert "dead letters (3)" in everything.output
    assert "training.requests[0]@7" in everything.output and "payload truncated" in everything.output

    recent = runner.invoke(
        app, ["deadletters", "list", "--since", (now - timedelta(hours=1)).isoformat()], env={"COLUMNS": "400"}
    )
    assert "dead letters (2)" in recent.output and "out of range" not in recent.output
    labels = runner.invoke(app, ["deadletters", "list", "--topic", "labels", "--reason", "OUT OF RANGE"])
    assert "dead letters (1)" in labels.output

    replayed = runner.invoke(app, ["deadletters", "replay", "--topic", "training.requests"])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 of 2 dead letters (1 truncated, left alone)" in replayed.output
    records = asyncio.run(read_topic(settings, "training.requests", 1))
    assert len(records) == 1
    assert RetrainRequested.model_validate_json(records[0].value) == request
    assert records[0].key == "churn"
    assert records[0].headers == {"ce_id": request.event_id, "ce_type": request.EVENT_TYPE}

    nothing = runner.invoke(app, ["deadletters", "replay", "--reason", "no such reason"])
    assert "replayed 0 of 0 dead letters" in nothing.output
