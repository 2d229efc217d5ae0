from __future__ import annotations

from driftloop.streams import StreamSettings


class MonitoringSettings(StreamSettings):
    service: str = "monitoring"
    #: The monitor of a model is written to its changelog-backed table every this many outcomes (and on drift).
    checkpoint_every: int = 50
