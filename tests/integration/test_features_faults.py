"""The features service waits out an object store that goes away: no vector dead-lettered, none lost."""

from __future__ import annotations

import asyncio
import time
import uuid

from moto.server import ThreadedMotoServer
from prometheus_client import REGISTRY
from pydantic import SecretStr

from driftloop.artifacts import open_store
from driftloop.bus import Bus
from driftloop.contracts import FeatureVector, utcnow
from driftloop.offline import OfflineStore
from driftloop.services.features.main import create_app
from driftloop.services.features.settings import FeaturesSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, read_topic, running


def _retries() -> float:
    labels = {"service": "features", "stage": "features.offline", "reason": "object_store"}
    return REGISTRY.get_sample_value("driftloop_retries_total", labels) or 0.0


async def test_the_offline_writer_retries_while_the_object_store_is_down_and_writes_every_vector_after(
    settings: DriftloopSettings, bus: Bus
) -> None:
    # A server of this test's own, since it is stopped; moto keeps its buckets in the process, not the server.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = settings.model_copy(
        update={
            "artifact_uri": f"s3://t-{uuid.uuid4().hex[:12]}/artifacts",
            "s3_endpoint": f"{host}:{port}",
            "s3_access_key": "driftloop-test",
            "s3_secret_key": SecretStr("driftloop-test-secret"),
            "retry_backoff_seconds": 0.2,
            "retry_backoff_max_seconds": 1.0,
        }
    )
    features = FeaturesSettings(**s3.model_dump(), offline_flush_seconds=0.2)
    vectors = [
        FeatureVector(
            event_id=f"e{i}",
            entity_id=f"c{i % 3}",
            event_time=utcnow(),
            feature_view="applications",
            features={**APPLICATION, "entity_count": 1.0, "entity_mean_loan": 1.0},
            label=i % 2,
        )
        for i in range(12)
    ]
    retries_before = _retries()
    try:
        async with running(create_app(features)):
            server.stop()
            for vector in vectors:
                await bus.publish(vector, vector.entity_id)
            deadline = time.monotonic() + 120
            while _retries() < retries_before + 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert _retries() >= retries_before + 3, "the writer never met the outage"

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            rows: list[str] = []
            while time.monotonic() < deadline:
                rows = sorted(r.event_id for r in OfflineStore(open_store(s3), "applications").training_set())
                if len(rows) >= len(vectors):
                    break
                await asyncio.sleep(0.5)
    finally:
        server.stop()
    assert rows == sorted(v.event_id for v in vectors)
    assert await read_topic(settings, "events.deadletter", 1, timeout=2) == []
