from __future__ import annotations

from datetime import timedelta

from driftloop.streams import StreamSettings


class MonitoringSettings(StreamSettings):
    service: str = "monitoring"
    #: The monitor of a model is written to its changelog-backed table every this many outcomes (and on drift).
    checkpoint_every: int = 50
    #: How long, in event time, a prediction waits for its label (and a label for its prediction). Older
    #: join entries are dropped, so predictions that never get a label do not grow the state; a label
    #: later than this is not scored, and a duplicate prediction later than this is not recognised.
    label_horizon: timedelta = timedelta(hours=1)
