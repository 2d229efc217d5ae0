"""``make bench``: every benchmark in one run on one broker, printed with its peer's figure and written as JSON.

``python -m tests.bench [--broker tansu|kafka] [--quick]``; the result goes to
``.driftloop/bench/<broker>.json`` (or ``--out``). No figure here is asserted:
the README quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.bench import bench_serving
from tests.bench.bench_loop import bench_broker, bench_ingestion, first_champion, offered_load, start_stack

console = Console()


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


async def loop_runs(
    bootstrap: str, home: Path, rates: list[float], seconds: float, replicas: int = 1
) -> list[dict[str, Any]]:
    """One fresh stack per rate, so no run inherits the backlog of the one before."""
    results = []
    for rate in rates:
        stack = await asyncio.to_thread(start_stack, bootstrap, home, replicas)
        try:
            await first_champion(stack)
            console.print(
                f"loop, {replicas} replica(s) per service: offering {rate:,.0f} events/s for {seconds:.0f}s …"
            )
            results.append((await offered_load(stack, rate, seconds)).__dict__)
        finally:
            await asyncio.to_thread(stack.stop)
    return results


async def serving(bootstrap: str, home: Path, seconds: float) -> dict[str, Any]:
    """REST predict against a bare FastAPI app scoring the same artifact (tests.bench.bench_serving)."""
    out = home / "serving.json"
    (home / "serving").mkdir(parents=True, exist_ok=True)
    variants = ["deployment (defaults)", "deployment, no micro-batching"]
    await bench_serving.main(bootstrap, home / "serving", out, seconds, 8, variants, [1, 100])
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


async def run(bootstrap: str, home: Path, quick: bool, result: dict[str, Any]) -> None:
    """Fill ``result`` part by part, so a part that fails leaves the others' figures."""
    n = 20_000 if quick else 100_000
    console.print(f"ingestion against a raw pass-through, {n:,} events each …")
    result["ingestion"] = (await bench_ingestion(bootstrap, home, n)).as_dict()
    seconds = 20.0 if quick else 60.0
    result["loop"] = await loop_runs(bootstrap, home, [500.0, 1000.0, 2000.0, 5000.0], seconds)
    at_2000 = next(run for run in result["loop"] if run["offered_rate"] == 2000.0)
    result["replicas"] = [at_2000, *await loop_runs(bootstrap, home, [2000.0], seconds, replicas=2)]
    console.print("REST serving against a bare FastAPI app …")
    result["serving"] = await serving(bootstrap, home, 4.0 if quick else 8.0)


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"driftloop bench on {result['broker']} ({result['machine']['cpus']} cores)")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("peer", justify="right")
    table.add_column("ratio", justify="right")
    ing = result["ingestion"]
    table.add_row(
        "ingestion events/s (raw aiokafka pass-through as peer)",
        fmt(ing["ingestion_events_per_s"]),
        fmt(ing["passthrough_events_per_s"]),
        fmt(ing["ratio"], "x"),
    )
    for run in result["loop"]:
        table.add_row(
            f"loop at {run['offered_rate']:,.0f}/s offered: outcomes/s in the window, lag at end, effective/s",
            f"{fmt(run['sustained_rate'])}, {run['lag_at_end']:,}, {fmt(run.get('effective_rate'))}",
            f"{run['offered_rate']:,.0f}",
            fmt(run["sustained_rate"] / run["offered_rate"], "x"),
        )
        table.add_row(
            f"loop at {run['offered_rate']:,.0f}/s: outcomes/s from a quarter into the window to its end",
            fmt(run["steady_rate"]),
            f"{run['offered_rate']:,.0f}",
            fmt(run["steady_rate"] / run["offered_rate"], "x"),
        )
        table.add_row(
            f"loop at {run['offered_rate']:,.0f}/s: latency p50 / p99 ms",
            f"{fmt(run['latency_p50_ms'])} / {fmt(run['latency_p99_ms'])}",
            "",
            "",
        )
        table.add_row(
            f"loop at {run['offered_rate']:,.0f}/s: peak lag, first / second half of the window (level = keeps up)",
            f"{run['lag_peak_first_half']:,} / {run['lag_peak_second_half']:,}",
            "",
            "",
        )
    one, two = result["replicas"]
    table.add_row(
        f"loop at {two['offered_rate']:,.0f}/s offered: outcomes/s with 2 replicas per service",
        fmt(two["sustained_rate"]),
        f"{fmt(one['sustained_rate'])} (1 replica)",
        fmt(two["sustained_rate"] / one["sustained_rate"] if one["sustained_rate"] else None, "x"),
    )
    served = result["serving"]["results"]
    for bare, ours in zip(served[::2], served[1::2], strict=True):
        table.add_row(
            f"REST predict, {ours['rows']} row(s), 8 connections: req/s, p99 ms ({ours['target']})",
            f"{fmt(ours['rps'])}, {fmt(ours['p99_ms'])}",
            f"{fmt(bare['rps'])}, {fmt(bare['p99_ms'])} (bare FastAPI)",
            fmt(ours["ratio_to_bare"], "x"),
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--broker", choices=["tansu", "kafka"], default=os.environ.get("DRIFTLOOP_BENCH_BROKER", "tansu")
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a first look")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: Path = args.out or Path(".driftloop") / "bench" / f"{args.broker}.json"
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        home = Path(tmp)
        broker = bench_broker(args.broker, home)
        result: dict[str, Any] = {
            "broker": args.broker,
            "quick": args.quick,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }
        try:
            with broker:
                asyncio.run(run(broker.bootstrap, home, args.quick, result))
        finally:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
            console.print(f"written to {out}")
    report(result)


if __name__ == "__main__":
    main()
