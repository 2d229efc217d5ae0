from __future__ import annotations

from driftloop.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    service: str = "training"
    #: How often a run that waits for labelled rows looks at the offline store again.
    data_poll_seconds: float = 2.0
