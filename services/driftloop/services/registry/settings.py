from __future__ import annotations

from pydantic import Field

from driftloop.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service: str = "registry"
    monitoring_url: str = Field(
        default="",
        description="Where the dashboard's browsers reach monitoring; empty = the page's host, monitoring's port.",
    )
    approval_check_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often versions waiting for approval are held to promotion.approval_timeout.",
    )
