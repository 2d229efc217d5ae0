"""The page people watch the loop with: per model the champion and its history, accuracy and drift over time,
the versions with their gate decisions, slices and lineage, and the audit log.

One HTML document with its script and charts inline (SVG drawn by the
browser), so it needs no build step and no CDN. It reads the registry's own
JSON API and monitoring's ``/v1/models/{name}/history``, which monitoring
serves to other origins for it, and draws again every few seconds. The
server only tells it where monitoring is.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from driftloop.http import READ
from driftloop.services.registry.settings import RegistrySettings

router = APIRouter(tags=["dashboard"], dependencies=[READ])

PAGE = (files("driftloop.services.registry") / "dashboard.html").read_text(encoding="utf-8")


def get_settings(request: Request) -> RegistrySettings:
    settings: RegistrySettings = request.app.state.settings
    return settings


def render(settings: RegistrySettings) -> str:
    """The page, told where the browser finds monitoring: the configured URL, else monitoring's port on the
    page's own host (the page works that out itself, as only it knows the host it was reached by)."""
    return PAGE.replace("__MONITORING_URL__", escape(settings.monitoring_url, quote=True)).replace(
        "__MONITORING_PORT__", str(settings.service_port("monitoring"))
    )


@router.get("/", response_class=HTMLResponse)
async def dashboard(settings: Annotated[RegistrySettings, Depends(get_settings)]) -> str:
    return render(settings)
