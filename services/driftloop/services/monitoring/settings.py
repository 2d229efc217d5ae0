from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from driftloop.streams import StreamSettings


class MonitoringSettings(StreamSettings):
    service: str = "monitoring"
    #: How long, in event time, a prediction waits for its label (and a label for its prediction). Older
    #: join entries are dropped, so predictions that never get a label do not grow the state; a label
    #: later than this is not scored, and a duplicate prediction later than this is not recognised.
    label_horizon: timedelta = timedelta(hours=1)
    #: Settled join entries (labelled and scored) kept per join partition to recognise duplicates; older ones
    #: are dropped before the horizon. A repeat arriving after this many newer settled events is scored again.
    settled_kept: int = Field(default=20_000, ge=1)
    #: Each stage handles up to this many records at a time, or what arrived within ``batch_within`` seconds.
    batch: int = 1000
    batch_within: float = 0.05
    #: A model's data-drift windows reach their table after this many batches of rows (or at once after a
    #: finding): they are a sample, so a crash may lose this many batches of them, and writing them less
    #: often keeps their changelog small.
    data_checkpoint_batches: int = Field(default=10, ge=1)
    #: Rows re-keyed by model per record of the internal rows topic, which bounds its record size.
    data_rows_per_record: int = Field(default=250, ge=1)
    #: How long the start waits for ``registry.events``' history (which version is champion) before failing.
    catch_up_timeout_seconds: float = 120.0
