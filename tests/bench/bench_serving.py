"""REST serving figures: the deployment service against a bare FastAPI app scoring the same artifact.

Run with ``.venv/bin/python -m tests.bench.bench_serving [--out PATH] [--seconds S]``.
Both servers run as their own processes (deployment with a real broker and a
champion found in ``registry.events``, exactly as in production) and are driven
by the same async load generator at the same connection count, for one row
and for a hundred rows per request. Each deployment variant (acks, where
scoring runs, micro-batching) is a fresh process configured by its
``DRIFTLOOP_*`` variables. Figures are printed and written as JSON; nothing
is asserted, they are for comparing across changes on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI
from pydantic import BaseModel, Field
from river.datasets import synth

from driftloop.artifacts import open_store, sha256_hex
from driftloop.broker import EmbeddedBroker, free_port
from driftloop.bus import Bus, ensure_topics
from driftloop.config import load_config
from driftloop.contracts import ModelPromoted
from driftloop.contracts.events import Features
from driftloop.modeling import ModelArtifact, build_pipeline, select
from driftloop.settings import DriftloopSettings

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "driftloop.yaml")
SPEC = CONFIG.models[0]
BIN = Path(sys.executable).parent

#: Deployment variants: the name printed, and the settings that differ from the defaults.
VARIANTS: dict[str, dict[str, str]] = {
    "deployment (defaults)": {},
    "deployment, no micro-batching": {"DRIFTLOOP_PREDICT_BATCH_ROWS": "0"},
    "deployment, micro-batch 64 rows, no wait": {
        "DRIFTLOOP_PREDICT_BATCH_ROWS": "64",
        "DRIFTLOOP_PREDICT_BATCH_WAIT_MS": "0",
    },
    "deployment, acks=wait": {"DRIFTLOOP_PREDICTION_ACKS": "wait"},
    "deployment, always in a thread": {"DRIFTLOOP_PREDICT_THREAD_ROWS": "1"},
    "deployment, never in a thread": {"DRIFTLOOP_PREDICT_THREAD_ROWS": "100000"},
}


@dataclass
class Figures:
    target: str
    rows: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    ratio_to_bare: float | None = None


def applications(n: int, seed: int = 2) -> list[dict[str, float | int]]:
    return [
        {k: float(v) if isinstance(v, float) else int(v) for k, v in x.items()}
        for x, _ in synth.Agrawal(seed=seed).take(n)
    ]


def train() -> ModelArtifact:
    """The demo's model, as configured in driftloop.yaml, on the demo's data."""
    rows = applications(3000, seed=1)
    labels = [int(y) for _, y in synth.Agrawal(seed=1).take(3000)]
    pipeline = build_pipeline(SPEC.estimator, SPEC.params)
    pipeline.fit(select(rows, SPEC.features), labels)
    return ModelArtifact(SPEC.name, "bench", list(SPEC.features), pipeline)


class BareRequest(BaseModel):
    instances: list[Features] = Field(min_length=1, max_length=10_000)


def bare_app(artifact_path: Path) -> FastAPI:
    """What a hand-written scoring endpoint does: parse, score, answer; no publishing, no envelope."""
    artifact = ModelArtifact.from_bytes(artifact_path.read_bytes())
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: BareRequest) -> dict[str, Any]:
        labels, probabilities = artifact.predict(body.instances)
        return {"predictions": labels, "probabilities": probabilities}

    return app


async def drive(url: str, body: bytes, connections: int, seconds: float, warmup: float) -> tuple[int, int, list[float]]:
    """Closed-loop load: each connection sends its next request when the last one is answered."""
    latencies: list[float] = []
    errors = 0
    warmup_until = time.perf_counter() + warmup
    stop_at = warmup_until + seconds
    headers = {"content-type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                ok = response.status == 200
            if now >= warmup_until:
                latencies.append(time.perf_counter() - now)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return len(latencies), errors, latencies


def figures(target: str, rows: int, result: tuple[int, int, list[float]], seconds: float) -> Figures:
    count, errors, latencies = result
    cuts = statistics.quantiles(latencies, n=100)
    return Figures(target, rows, count, errors, count / seconds, cuts[49] * 1000, cuts[98] * 1000)


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def server(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: Length of one turn of the alternation between the bare app and the deployment service.
SLICE = 1.0


async def settled(base: str) -> None:
    """Wait until the deployment has handed every answered prediction to the broker."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            if "\ndriftloop_predictions_queued 0.0" in text:
                return
            await asyncio.sleep(0.05)


async def measure(
    targets: list[tuple[str, str, str | None]], body: bytes, rows: int, connections: int, seconds: float
) -> list[Figures]:
    """Drive each (name, url, base) in turn, ``SLICE`` seconds at a time, until each had ``seconds`` of load.

    The machine is shared: its load changes from one second to the next.
    Alternating in short turns exposes both servers to the same changes, so
    their ratio holds even when the absolute figures move. A deployment's
    turn lasts until its queued predictions are published (the wait counts as
    its time), so the next turn does not pay for its publishing.
    """
    totals = {name: (0, 0, list[float]()) for name, _, _ in targets}
    elapsed = dict.fromkeys(totals, 0.0)
    for _ in range(max(1, round(seconds / SLICE))):
        for name, url, base in targets:
            count, errors, latencies = await drive(url, body, connections, SLICE, warmup=0.2)
            started = time.perf_counter()
            if base is not None:
                await settled(base)
            elapsed[name] += SLICE + time.perf_counter() - started
            total = totals[name]
            totals[name] = (total[0] + count, total[1] + errors, total[2] + latencies)
    return [figures(name, rows, totals[name], elapsed[name]) for name, _, _ in targets]


def report(f: Figures) -> None:
    ratio = f"  {f.ratio_to_bare:.2f}x the bare app" if f.ratio_to_bare is not None else ""
    print(
        f"  {f.target:<46} rows={f.rows:<4} {f.rps:7.1f} req/s  p50 {f.p50_ms:6.1f} ms"
        f"  p99 {f.p99_ms:6.1f} ms  errors {f.errors}{ratio}",
        flush=True,
    )


async def main(
    bootstrap: str,
    work: Path,
    out: Path,
    seconds: float,
    connections: int,
    variants: list[str],
    row_counts: list[int],
) -> None:
    settings = DriftloopSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
        home=work / "home",
        config=REPO / "driftloop.yaml",
    )
    await ensure_topics(settings)
    artifact = train()
    blob = artifact.to_bytes()
    (work / "model.skops").write_bytes(blob)
    uri = open_store(settings).put(f"models/{SPEC.name}/bench/model.skops", blob)
    bus = Bus(settings, "bench")
    await bus.start()
    await bus.publish(
        ModelPromoted(
            model_name=SPEC.name,
            version=1,
            previous_version=None,
            artifact_uri=uri,
            artifact_sha256=sha256_hex(blob),
            actor="bench",
        ),
        SPEC.name,
    )
    await bus.stop()

    print(f"REST serving, {connections} connections, {seconds:.0f} s per figure, {os.cpu_count()} cores")
    print(f"the bare app and each deployment variant take turns of {SLICE:.0f} s, so both see the same machine load")
    results: list[Figures] = []
    bare_port = free_port()
    bare = [sys.executable, "-m", "tests.bench.bench_serving", "--bare", str(work / "model.skops")]
    bare_base = f"http://127.0.0.1:{bare_port}"
    with server([*bare, "--port", str(bare_port)], {}, work / "bare.log") as bare_process:
        await wait_ready(f"{bare_base}/docs", bare_process)
        for name in variants:
            port = free_port()
            env = {
                "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
                "DRIFTLOOP_TOPIC_PREFIX": settings.topic_prefix,
                "DRIFTLOOP_HOME": str(settings.home),
                "DRIFTLOOP_CONFIG": str(settings.config),
                "DRIFTLOOP_PORT": str(port),
                "DRIFTLOOP_LOG_LEVEL": "WARNING",
                **VARIANTS[name],
            }
            base = f"http://127.0.0.1:{port}"
            with server([str(BIN / "driftloop"), "service", "deployment"], env, work / "deployment.log") as process:
                await wait_ready(f"{base}/readyz", process)
                for rows in row_counts:
                    body = json.dumps({"instances": applications(rows)}).encode()
                    url = f"{base}/v1/models/{SPEC.name}/predict"
                    targets = [("bare FastAPI", f"{bare_base}/predict", None), (name, url, base)]
                    reference, result = await measure(targets, body, rows, connections, seconds)
                    result.ratio_to_bare = result.rps / reference.rps
                    report(reference)
                    report(result)
                    results += [reference, result]

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "serving",
                "connections": connections,
                "seconds": seconds,
                "cores": os.cpu_count(),
                "model": {"estimator": SPEC.estimator, "params": SPEC.params, "features": len(SPEC.features)},
                "results": [asdict(f) for f in results],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")


def run_bare(artifact_path: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(artifact_path), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".driftloop/bench/serving.json"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rows", nargs="*", type=int, default=[1, 100], help="rows per request, one figure each")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(args.bare, args.port)
    else:
        work = Path(tempfile.mkdtemp(prefix="driftloop-bench-serving-"))
        with EmbeddedBroker(free_port(), log_path=work / "broker.log") as broker:
            asyncio.run(
                main(broker.bootstrap, work, args.out, args.seconds, args.connections, args.variants, args.rows)
            )
