from __future__ import annotations

from driftloop.streams import StreamSettings


class FeaturesSettings(StreamSettings):
    service: str = "features"
    #: Vectors per offline segment, and the longest a vector waits to be written.
    offline_batch: int = 5000
    offline_flush_seconds: float = 1.0
    #: Events folded per batch, and the longest the first one waits for the rest.
    compute_batch: int = 1000
    compute_within: float = 0.05
