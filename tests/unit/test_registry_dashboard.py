"""The dashboard page: self-contained (nothing fetched from elsewhere but the APIs), told where monitoring is."""

from __future__ import annotations

import re

from driftloop.services.registry.dashboard import render
from driftloop.services.registry.settings import RegistrySettings


def test_the_page_loads_nothing_from_other_hosts_and_writes_no_data_as_markup() -> None:
    page = render(RegistrySettings())
    assert re.findall(r"""(?:src|href)\s*=\s*["']?https?:""", page) == []
    assert "<script src" not in page and "<link" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


def test_the_page_is_told_monitorings_url_escaped_or_else_its_port() -> None:
    page = render(RegistrySettings(monitoring_url='http://mon:9/"><script>alert(1)</script>'))
    assert 'data-monitoring-url="http://mon:9/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page
    assert "<script>alert(1)" not in page
    assert 'data-monitoring-port="8706"' in render(RegistrySettings(port_base=8700))
    assert 'data-monitoring-url=""' in render(RegistrySettings(ports={"monitoring": 9106}))
    assert 'data-monitoring-port="9106"' in render(RegistrySettings(ports={"monitoring": 9106}))
