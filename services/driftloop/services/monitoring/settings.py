from __future__ import annotations

from datetime import timedelta

from driftloop.streams import StreamSettings


class MonitoringSettings(StreamSettings):
    service: str = "monitoring"
    #: How long, in event time, a prediction waits for its label (and a label for its prediction). Older
    #: join entries are dropped, so predictions that never get a label do not grow the state; a label
    #: later than this is not scored, and a duplicate prediction later than this is not recognised.
    label_horizon: timedelta = timedelta(hours=1)
    #: Each stage handles up to this many records at a time, or what arrived within ``batch_within`` seconds.
    batch: int = 1000
    batch_within: float = 0.05
