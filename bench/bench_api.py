"""Benchmark of the HTTPS API over TLS with keep-alive (`make bench`).

Runs the real app (real registry and lifecycle writing DPI + .ready into a temporary mappings
directory, JSON logging at info to a file, as in production) in a separate process on
loopback, then Debian's `wrk`, for three scenarios:
  * health: GET /health, the ceiling of hypercorn + TLS + our request hooks;
  * set_dpi_tmpfs: PUT /set_container_dpi, mapping files on tmpfs (the API's own cost);
  * set_dpi_disk: the same on the machine's disk, where the two fsyncs per request show.
Each: unloaded (1 connection -> p50 of one request at a time) and loaded (50 keep-alive
connections, 2 threads -> req/s, p50, p99). Writes bench/results/api.json. Targets (for
set_dpi_tmpfs): >= 2,000 req/s, p99 <= 50 ms. Not a test: numbers depend on the machine
(and on what else runs on it: the load average is recorded) and are never asserted.

    python bench/bench_api.py [--duration 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_common import results_header, write_results

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "api.json"
HOST_PORT = 40000
SECRET_ENV = "BENCH_API_SECRET"
TARGET_RPS = 2000
TARGET_P99_MS = 50.0


def serve(workdir: Path, log_level: str) -> None:
    """Child process: the API on 127.0.0.1:0; prints its URL, serves until stdin closes."""
    import trio

    sys.path.insert(0, str(REPO))
    from fractal_hostd.process.logs import setup_logging
    from tests.api_fixtures import make_api, running_api

    setup_logging(fmt="json", level=log_level)

    async def main() -> None:
        api = make_api(
            workdir, with_cloud_storage=False, container_wait=1.0, secret=os.environ[SECRET_ENV]
        )
        await api.add_container(HOST_PORT)
        async with running_api(workdir, api=api) as running:
            print(running.url, flush=True)
            # The parent closes our stdin to stop us.
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    trio.run(main)


def _wrk(
    url: str, script: Path, *, threads: int, connections: int, duration: int
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    percentiles = {
        p: _ms(value, unit)
        for p, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "threads": threads,
        "connections": connections,
        "duration_s": duration,
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": percentiles["50"],
        "p90_ms": percentiles["90"],
        "p99_ms": percentiles["99"],
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else None,
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


@contextlib.contextmanager
def _server(workdir: Path, secret: str, log_level: str) -> Iterator[tuple[str, int]]:
    """The API in a child process (its log in workdir/server.log); yields its URL and pid."""
    argv = [__file__, "--serve", str(workdir), "--log-level", log_level]
    with server_process(argv, workdir, secret, wait_s=10) as (url, pid):
        yield url, pid


@contextlib.contextmanager
def server_process(
    argv: list[str], workdir: Path, secret: str, wait_s: float
) -> Iterator[tuple[str, int]]:
    """`python argv` as a server (its log in workdir/server.log) that prints its URL on
    stdout and exits when its stdin closes; yields that URL and its pid."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, SECRET_ENV: secret},
        )
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            url = server.stdout.readline().strip()
            if not url.startswith("https://"):
                raise RuntimeError(f"{argv} did not start:\n{(workdir / 'server.log').read_text()}")
            yield url, server.pid
        finally:
            server.stdin.close()
            server.wait(timeout=wait_s)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


DPI_IN_BODY = '"dpi": 96'


def _lua(path: Path, *, method: str, body: str | None, secret: str) -> Path:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {secret}"']
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if body is not None and DPI_IN_BODY in body:
        # A new DPI each request: the same value twice writes nothing (the lifecycle rewrites
        # only what differs), so a fixed one would measure no file write at all.
        head, tail = body.split(DPI_IN_BODY)
        lines += [
            "counter = 0",
            "request = function()",
            "  counter = counter + 1",
            f"  local body = '{head}\"dpi\": ' .. (counter % 900 + 50) .. '{tail}'",
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    elif body is not None:
        lines.append(f"wrk.body = '{body}'")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--log-level", default="info", help="the server's log level (info: as in production)"
    )
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.log_level)
        return 0

    secret = secrets.token_urlsafe(32)
    dpi_body = json.dumps({"host_port": HOST_PORT, "dpi": 96})
    # Where the mapping files go decides the cost of their fsyncs: tmpfs isolates the API's
    # own cost, the machine's disk shows what the durable writes add (contract §3).
    places = {"tmpfs": Path("/dev/shm"), "disk": Path(tempfile.gettempdir())}
    scenarios = {
        "health": ("GET", "/health", None, "tmpfs"),
        "set_dpi_tmpfs": ("PUT", "/set_container_dpi", dpi_body, "tmpfs"),
        "set_dpi_disk": ("PUT", "/set_container_dpi", dpi_body, "disk"),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, (method, path, body, place) in scenarios.items():
        with tempfile.TemporaryDirectory(prefix="bench-api-", dir=places[place]) as tmp:
            workdir = Path(tmp)
            script = _lua(workdir / "request.lua", method=method, body=body, secret=secret)
            with _server(workdir / "server", secret, args.log_level) as (url, pid):
                unloaded = _wrk(url + path, script, threads=1, connections=1, duration=3)
                cpu_before = _cpu_seconds(pid)
                loaded = _wrk(
                    url + path,
                    script,
                    threads=2,
                    connections=args.connections,
                    duration=args.duration,
                )
                # CPU per request is what the shared machine's load cannot distort much:
                # 1000 / cpu_ms is the rate one dedicated core would sustain.
                cpu_ms = (_cpu_seconds(pid) - cpu_before) * 1000 / max(loaded["requests"], 1)
        results[name] = {
            "request": f"{method} {path}",
            "mappings_on": place,
            "unloaded_p50_ms": unloaded["p50_ms"],
            "unloaded": unloaded,
            "loaded": loaded,
            "server_cpu_ms_per_request": round(cpu_ms, 3),
            "one_core_requests_per_s": round(1000 / cpu_ms) if cpu_ms else None,
        }
        print(
            f"{name}: {loaded['requests_per_s']:.0f} req/s, p50 {loaded['p50_ms']} ms, "
            f"p99 {loaded['p99_ms']} ms; unloaded p50 {unloaded['p50_ms']} ms; "
            f"server CPU {cpu_ms:.2f} ms/request",
            flush=True,
        )
    headline = results["set_dpi_tmpfs"]["loaded"]
    result = {
        **results_header(
            "HTTPS API over TLS, keep-alive, wrk (bench/bench_api.py)",
            python=platform.python_version(),
        ),
        "server_log_level": args.log_level,
        "scenarios": results,
        "targets": {"requests_per_s": TARGET_RPS, "p99_ms": TARGET_P99_MS},
        "meets_targets": headline["requests_per_s"] >= TARGET_RPS
        and headline["p99_ms"] <= TARGET_P99_MS,
    }
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
