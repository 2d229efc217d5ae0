from __future__ import annotations

from driftloop.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service: str = "registry"
