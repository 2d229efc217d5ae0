from __future__ import annotations

import socket

from pydantic import Field

from driftloop.settings import ServiceSettings


class DeploymentSettings(ServiceSettings):
    service: str = "deployment"
    #: Names this replica in rollout events; defaults to host and port.
    instance: str = Field(default_factory=socket.gethostname)
    #: How long start-up may take to read the registry's history before the service gives up loudly.
    catch_up_timeout_seconds: float = 120.0
