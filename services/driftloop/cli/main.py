"""``driftloop``: one command to run the stack, watch the loop, and operate it."""

from __future__ import annotations

import asyncio
import importlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console
from rich.live import Live
from rich.table import Table

from driftloop.broker import local_broker
from driftloop.cli import deadletters, governance, offline, ops
from driftloop.cli.stack import SERVICES, Stack, parse_replicas
from driftloop.logging import configure_logging
from driftloop.settings import DriftloopSettings, ServiceSettings

app = typer.Typer(help="driftloop: drift detection, retraining and promotion over Kafka.", no_args_is_help=True)
contracts_app = typer.Typer(help="The wire contracts: JSON Schemas and the AsyncAPI document.")
app.add_typer(contracts_app, name="contracts")
console = Console()
ops.register(app)
governance.register(app)
offline.register(app)
deadletters.register(app)


@app.command()
def service(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")]) -> None:
    """Run one service in the foreground (its port from DRIFTLOOP_PORT or the default)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    settings = ServiceSettings(service=name)
    module = importlib.import_module(f"driftloop.services.{name}.main")
    uvicorn.run(
        module.create_app(),
        host=settings.host,
        port=settings.listen_port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


KafkaOption = Annotated[
    bool, typer.Option("--kafka", help="Apache Kafka (KRaft, jars fetched with Maven) instead of Tansu.")
]


def _settings(kafka: bool) -> DriftloopSettings:
    settings = DriftloopSettings()
    return settings.model_copy(update={"broker": "kafka"}) if kafka else settings


@app.command()
def broker(kafka: KafkaOption = False) -> None:
    """Run a local broker until interrupted: Tansu (embedded), or Apache Kafka with --kafka."""
    settings = _settings(kafka)
    configure_logging("broker", settings.log_level, "console")
    (settings.home / "logs").mkdir(parents=True, exist_ok=True)
    running = local_broker(settings, settings.home / "logs" / "broker.log")
    with console.status(f"starting {running.kind}…"):
        running.start()
    console.print(f"[green]{running.kind} ready[/] on {running.bootstrap} (Ctrl-C to stop)")
    try:
        _until_signal(lambda: None)
    finally:
        running.stop()


def _until_signal(tick: Callable[[], None], every: float = 1.0) -> None:
    """Call ``tick`` every ``every`` seconds until Ctrl-C or SIGTERM, so both stop the same clean way."""
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            tick()
            time.sleep(every)
    except KeyboardInterrupt:
        pass


def status_table(stack: Stack, states: dict[str, str]) -> Table:
    table = Table(title="driftloop stack", expand=False)
    table.add_column("service")
    table.add_column("url")
    table.add_column("state")
    table.add_column("restarts", justify="right")
    table.add_row(
        "broker",
        stack.settings.bootstrap,
        "[green]ready[/]" if stack.broker or stack.settings.kafka_bootstrap else "-",
        "",
    )
    for name, state in states.items():
        child = stack.children[name]
        table.add_row(name, child.url, f"[{_colour(state)}]{state}[/]", str(child.restarts))
    return table


def _colour(state: str) -> str:
    if state == "ready":
        return "green"
    if state == "starting" or state.startswith("exited") and "restarting" in state:
        return "yellow"
    return "red"


@app.command()
def up(
    replicas: Annotated[
        list[str] | None,
        typer.Option(
            "--replicas",
            help="Replicas per service: N for every service, SERVICE=N for one; repeatable, later values win. "
            "Replica k listens on the service's port + 10*k.",
        ),
    ] = None,
    kafka: KafkaOption = False,
) -> None:
    """Start a local broker (unless DRIFTLOOP_KAFKA_BOOTSTRAP is set) and all six services; restart any that exits."""
    try:
        counts = parse_replicas(replicas or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--replicas") from exc
    stack = Stack(_settings(kafka), replicas=counts)
    configure_logging("driftloop", stack.settings.log_level, "console")
    try:
        stack.start()
        with Live(status_table(stack, stack.poll()), console=console, refresh_per_second=2) as live:

            def tick() -> None:
                stack.supervise()
                live.update(status_table(stack, stack.poll()))

            _until_signal(tick, every=0.5)
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("[green]stopped[/]")


def _running(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Events per second.")] = 150.0,
    drift_at: Annotated[int, typer.Option(help="Event number where the concept changes.")] = 3000,
    max_events: Annotated[int, typer.Option(help="Stop after this many events at the latest.")] = 12000,
    label_delay: Annotated[int, typer.Option(help="Events between an event and its label.")] = 100,
    kafka: KafkaOption = False,
) -> None:
    """Stream a drifting data set into the stack (starting one if none runs) and watch the loop close."""
    from driftloop.cli.demo import DemoOptions, run_demo, summary

    settings = _settings(kafka)
    stack: Stack | None = None
    urls = {name: f"http://127.0.0.1:{settings.service_port(name)}" for name in SERVICES}
    if not _running(urls["registry"]):
        stack = Stack(settings)
        configure_logging("driftloop", "WARNING", "console")
    try:
        if stack is not None:
            with console.status("starting the embedded broker and six services…"):
                stack.start()
                stack.wait_ready()
            settings = stack.settings
            console.print(status_table(stack, stack.poll()))
        options = DemoOptions(rate=rate, drift_at=drift_at, max_events=max_events, label_delay=label_delay)
        result = asyncio.run(run_demo(settings, options, urls))
        console.print(summary(result))
    finally:
        if stack is not None:
            with console.status("stopping the stack…"):
                stack.stop()
    if problems := result.failures():
        console.print(f"[red]the loop did not close:[/] {'; '.join(problems)}")
        raise typer.Exit(1)
    console.print("[green]the loop closed[/]: drift detected, new version promoted, rolled out and serving")


@contracts_app.command("export")
def contracts_export(out: Annotated[Path, typer.Option(help="Folder to write into.")] = Path("contracts")) -> None:
    """Write one JSON Schema per payload and the AsyncAPI document."""
    from driftloop.contracts.export import export_contracts

    for path in export_contracts(out):
        console.print(f"wrote {path}")


@contracts_app.command("check")
def contracts_check(
    committed: Annotated[Path, typer.Option(help="Folder with the committed contracts.")] = Path("contracts"),
) -> None:
    """Fail unless the models and the committed schemas read each other's records (backward and forward)."""
    from driftloop.contracts.compat import check_directory

    problems = check_directory(committed)
    for problem in problems:
        console.print(f"[red]incompatible[/] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]compatible[/]")


if __name__ == "__main__":
    app()
