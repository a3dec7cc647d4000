"""The API against its floors, side by side (`make bench`; numbers only, never asserted).

Three servers run at once on loopback, each in its own process, all with the same TLS
settings (our `hypercorn_config`: the same certificate, ciphers, TLS 1.2+):
  * service: the real app as the service runs it (auth, validation, registry, lifecycle
    writing DPI + .ready with their fsyncs, in worker threads, into a directory on the
    machine's disk, JSON logs at info, metrics, Sentry initialised with its logging
    integration and a scope per request) served by `serve_api` with its request slots;
  * quart_trio: a bare QuartTrio app (GET /health, GET /status answering a fixed document
    of the same size, PUT /set_container_dpi parsing the JSON body), served by
    `hypercorn.trio.serve`;
  * hypercorn_raw: a raw ASGI callable answering fixed bytes, served by `hypercorn.trio.serve`.
`wrk` (2 threads, 50 keep-alive connections) loads each in turn, in interleaved rounds (the
order rotates each round) so that the shared machine's load hits all alike. Per round and
request: requests/s and the server's CPU per request; the ratios service / floor are taken
per round and their median reported. Goals (issue 14): /health >= 0.9x and /status >= 0.8x
the bare quart-trio app; set_container_dpi (disk) >= 0.6x the bare app's PUT.
Writes bench/results/floors.json.

    python bench/bench_floors.py [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_api import HOST_PORT, _cpu_seconds, _lua, _wrk, server_process  # noqa: E402
from bench_common import results_header, write_results  # noqa: E402

RESULTS = REPO / "bench" / "results" / "floors.json"
SERVERS = ("service", "quart_trio", "hypercorn_raw")
GOALS = {"health": 0.9, "status": 0.8, "set_container_dpi": 0.6}
# A /status answer of the same size and shape as the service's with one container.
STATUS_DOCUMENT: dict[str, Any] = {
    "version": "9.9.9",
    "environment": "localdev",
    "api_url": "https://127.0.0.1:4678",
    "instance": {"instance_id": "i-0123456789abcdef0", "instance_type": "g4dn.xlarge"},
    "docker": {"connected": True, "events": 12, "reconnects": 0},
    "draining": None,
    "containers": [{"container_id": "c" * 64, "host_port": HOST_PORT, "tty": 10, "ready": True}],
}


def serve_service(workdir: Path) -> None:
    """Child process: the service's API on 127.0.0.1:0, as `run` sets it up; prints its URL."""
    import gc
    import os

    import trio
    from bench_api import SECRET_ENV

    from fractal_hostd.containers.lifecycle import run_in_thread
    from fractal_hostd.process import telemetry
    from fractal_hostd.process.logs import setup_logging
    from tests.api_fixtures import make_api, running_api

    setup_logging(fmt="json", level="info")
    # Sentry as in production (its logging integration turns each info line into a
    # breadcrumb); nothing listens there, and a request that succeeds sends no event.
    telemetry.init_sentry(
        dsn="http://public@127.0.0.1:9/1", enabled=True, environment="bench", release="bench"
    )

    async def main() -> None:
        api = make_api(
            workdir,
            with_cloud_storage=False,
            container_wait=1.0,
            secret=os.environ[SECRET_ENV],
            run_blocking=run_in_thread,
        )
        await api.add_container(HOST_PORT)
        async with running_api(workdir, api=api) as running:
            gc.freeze()  # as the supervisor does once start-up is done
            print(running.url, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    trio.run(main)


def serve_floor(kind: str, workdir: Path) -> None:
    """Child process: a floor app on 127.0.0.1:0 with our TLS settings; prints its URL."""
    import functools

    import hypercorn.trio
    import trio
    from quart import jsonify, request
    from quart_trio import QuartTrio

    from fractal_hostd.api.server import hypercorn_config
    from fractal_hostd.api.tls import generate_certificate

    tls = generate_certificate(workdir / "private")
    config = hypercorn_config(
        bind="127.0.0.1:0", certfile=tls.certfile, keyfile=tls.keyfile, graceful_timeout=1
    )
    app: Any
    if kind == "quart_trio":
        app = QuartTrio("floor")

        @app.get("/health")
        async def health() -> Any:
            return jsonify({"status": "ok"})

        @app.get("/status")
        async def status() -> Any:
            return jsonify(STATUS_DOCUMENT)

        @app.put("/set_container_dpi")
        async def put() -> Any:
            body = await request.get_json()
            return jsonify({"result": True, "dpi": body["dpi"]})

    else:
        body = json.dumps(STATUS_DOCUMENT).encode()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    await send({"type": message["type"] + ".complete"})
                    if message["type"] == "lifespan.shutdown":
                        return
            more = True
            while more:  # read the request body, as a real app must
                message = await receive()
                more = message.get("more_body", False)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                functools.partial(hypercorn.trio.serve, app, config, mode="asgi")
            )
            print(urls[0], flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-floor", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-service", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if args.serve_service:
        serve_service(args.serve_service)
        return 0
    if args.serve_floor:
        serve_floor(args.serve_floor[0], Path(args.serve_floor[1]))
        return 0

    secret = secrets.token_urlsafe(32)
    dpi_body = json.dumps({"host_port": HOST_PORT, "dpi": 96})
    requests = {
        "health": ("GET", "/health", None),
        "status": ("GET", "/status", None),
        "set_container_dpi": ("PUT", "/set_container_dpi", dpi_body),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {server: [] for server in SERVERS} for name in requests
    }
    # The machine's disk, where the service's two fsyncs per set_container_dpi show.
    with (
        tempfile.TemporaryDirectory(prefix="bench-floors-", dir="/var/tmp") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        scripts = {
            name: _lua(workdir / f"{name}.lua", method=method, body=body, secret=secret)
            for name, (method, _, body) in requests.items()
        }
        servers = {
            "service": stack.enter_context(
                server_process(
                    [__file__, "--serve-service", str(workdir / "service")],
                    workdir / "service",
                    secret,
                    wait_s=15,
                )
            ),
            **{
                kind: stack.enter_context(
                    server_process(
                        [__file__, "--serve-floor", kind, str(workdir / kind)],
                        workdir / kind,
                        secret,
                        wait_s=15,
                    )
                )
                for kind in ("quart_trio", "hypercorn_raw")
            },
        }
        for url, _ in servers.values():  # warm up: imports, first handshakes
            _wrk(url + "/health", scripts["health"], threads=1, connections=4, duration=1)
        for round_number in range(args.rounds):
            order = SERVERS[round_number % 3 :] + SERVERS[: round_number % 3]
            for name, (_, path, _) in requests.items():
                for server in order:
                    url, pid = servers[server]
                    cpu_before = _cpu_seconds(pid)
                    result = _wrk(
                        url + path,
                        scripts[name],
                        threads=2,
                        connections=args.connections,
                        duration=args.duration,
                    )
                    cpu_ms = (_cpu_seconds(pid) - cpu_before) * 1000 / max(result["requests"], 1)
                    runs[name][server].append(
                        {
                            "requests_per_s": result["requests_per_s"],
                            "cpu_ms_per_request": round(cpu_ms, 3),
                            "p50_ms": result["p50_ms"],
                            "p99_ms": result["p99_ms"],
                            "non_2xx": result["non_2xx"],
                        }
                    )
                    print(
                        f"round {round_number + 1} {name:<18} {server:<14} "
                        f"{result['requests_per_s']:8.0f} req/s  {cpu_ms:6.3f} ms CPU/request",
                        flush=True,
                    )
    ratios: dict[str, Any] = {}
    for name, per_server in runs.items():
        service = per_server["service"]
        ratios[name] = {}
        for floor in ("quart_trio", "hypercorn_raw"):
            rps = [
                s["requests_per_s"] / f["requests_per_s"]
                for s, f in zip(service, per_server[floor], strict=True)
            ]
            cpu = [
                f["cpu_ms_per_request"] / s["cpu_ms_per_request"]
                for s, f in zip(service, per_server[floor], strict=True)
            ]
            ratios[name][f"vs_{floor}"] = {
                "requests_per_s": round(statistics.median(rps), 2),
                "cpu_per_request": round(statistics.median(cpu), 2),
            }
        goal = GOALS[name]
        ratios[name]["goal_vs_quart_trio"] = goal
        ratios[name]["meets_goal"] = ratios[name]["vs_quart_trio"]["requests_per_s"] >= goal
    result = {
        **results_header(
            "the API against a bare quart-trio app and a raw hypercorn app, same TLS "
            "(bench/bench_floors.py)"
        ),
        "rounds": args.rounds,
        "wrk": {"threads": 2, "connections": args.connections, "duration_s": args.duration},
        "ratios": ratios,
        "runs": runs,
    }
    for name, ratio in ratios.items():
        print(f"{name}: {json.dumps(ratio)}")
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
