"""Memory soak: the whole loop under a long stream, every service's resident memory sampled as it runs.

Every state a service keeps is meant to be bounded (join entries by the label
horizon, monitors by their windows, entities by the entity count), so after a
warm-up no service should keep growing. This runs ``events`` events and their
labels through a fresh stack at ``rate`` per second and reports, per service,
its resident size after the warm-up (the first ``warmup`` share of the
events), the largest it reached afterwards, and the difference, against the
issue's limit of 100 MB.

    python -m tests.bench.bench_soak --events 500000 --rate 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from driftloop.cli.stack import Stack
from tests.bench.bench_loop import bench_broker, first_champion, offered_load, start_stack

console = Console()
LIMIT_MB = 100.0


@dataclass
class Footprint:
    service: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)

    def after(self, warm: float) -> tuple[float | None, float | None]:
        """Resident MB at the end of the warm-up, and the most it reached afterwards."""
        later = [mb for t, mb in self.samples if t >= warm]
        return (later[0], max(later)) if later else (None, None)


async def sample(stack: Stack, footprints: dict[str, Footprint], began: float, stop: asyncio.Event) -> None:
    processes = {
        name: psutil.Process(child.process.pid) for name, child in stack.children.items() if child.process is not None
    }
    while not stop.is_set():
        for name, process in processes.items():
            try:
                mb = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
            footprints.setdefault(name, Footprint(name)).samples.append((time.monotonic() - began, mb))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2.0)


async def soak(bootstrap: str, home: Path, events: int, rate: float, warmup: float) -> dict[str, Any]:
    stack = await asyncio.to_thread(start_stack, bootstrap, home)
    footprints: dict[str, Footprint] = {}
    try:
        await first_champion(stack)
        seconds = events / rate
        console.print(f"soak: {events:,} events at {rate:,.0f}/s ({seconds:,.0f} s) …")
        stop = asyncio.Event()
        began = time.monotonic()
        sampler = asyncio.create_task(sample(stack, footprints, began, stop))
        loop = await offered_load(stack, rate, seconds, drain=300.0)
        stop.set()
        await sampler
    finally:
        await asyncio.to_thread(stack.stop)
    warm = warmup * seconds
    services = {}
    for name, footprint in sorted(footprints.items()):
        start, peak = footprint.after(warm)
        services[name] = {
            "rss_after_warmup_mb": start,
            "rss_peak_mb": peak,
            "growth_mb": peak - start if start is not None and peak is not None else None,
            "samples": footprint.samples,
        }
    return {"events": events, "rate": rate, "warmup_share": warmup, "loop": asdict(loop), "services": services}


def report(result: dict[str, Any]) -> None:
    loop = result["loop"]
    table = Table(title=f"soak: {result['events']:,} events at {result['rate']:,.0f}/s on {result['broker']}")
    for column in ("service", "RSS after warm-up MB", "peak MB", "growth MB", f"within {LIMIT_MB:.0f} MB"):
        table.add_column(column, justify="right")
    for name, figures in result["services"].items():
        growth = figures["growth_mb"]
        table.add_row(
            name,
            f"{figures['rss_after_warmup_mb']:.0f}",
            f"{figures['rss_peak_mb']:.0f}",
            f"{growth:.1f}",
            "yes" if growth is not None and growth <= LIMIT_MB else "no",
        )
    console.print(table)
    console.print(
        f"scored {loop['outcomes']:,} of {loop['events_sent']:,} events, {loop.get('repeated', 0):,} outcomes repeated;"
        f" sustained {loop['sustained_rate']:,.0f}/s;"
        f" lag at the end of the offered window {loop['lag_at_end']:,}; drained in {loop['drained_seconds']} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the events counted as warm-up")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: Path = args.out or Path(".driftloop") / "bench" / f"soak-{args.broker}.json"
    with tempfile.TemporaryDirectory(prefix="driftloop-soak-") as tmp:
        home = Path(tmp)
        with bench_broker(args.broker, home) as broker:
            result = asyncio.run(soak(broker.bootstrap, home, args.events, args.rate, args.warmup))
    result = {"broker": args.broker, "cpus": os.cpu_count(), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    report(result)
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
