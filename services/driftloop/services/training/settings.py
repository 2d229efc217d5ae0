from __future__ import annotations

from pydantic import Field

from driftloop.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    service: str = "training"
    #: How often a run that waits for labelled rows looks at the offline store again. After a drift every
    #: second of this wait is served by the drifted champion; a look reads only the run's window.
    data_poll_seconds: float = 0.5
    #: OpenMP threads a fit may use. OpenMP's workers spin while they wait for each other, so on cores shared
    #: with the other services a fit with a thread per core ran 15-25x slower than with one (two busy cores).
    fit_threads: int = Field(default=1, ge=1)
