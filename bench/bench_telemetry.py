"""What a request pays for its telemetry (`make bench`; numbers only, never asserted).

Telemetry here is everything a request does for observability rather than for its answer:
its log line (the record, redaction, JSON, the write, and what sentry-sdk's logging hook
does with it), its Sentry isolation scope, and its two Prometheus metrics. Two measures:

  * py-spy, the measure issue 14 names: the service, served as bench_floors serves it
    (Sentry initialised, JSON logs at info, mapping writes in worker threads, on the machine's
    disk), under `wrk` (2 threads, 50 keep-alive connections) on `PUT /set_container_dpi`
    (which logs a line) and `GET /status` (which does not: successful reads log at debug).
    py-spy samples every thread of the server; the share reported is the samples whose stack
    is in telemetry code over all samples (sentry-sdk's thread wrapper, under every worker
    thread, does not count);
  * the same code timed in this process (`timeit`), per call, and as a share of the CPU the
    server used per request under that load.

Goal (issue 14): at most 3 % of a request's CPU. py-spy comes with the dev dependencies
(`make install`); without it, or without the right to trace, only the second measure is taken.
Writes bench/results/telemetry.json.

    python bench/bench_telemetry.py [--rounds 2] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_api import HOST_PORT, _cpu_seconds, _lua, _wrk, server_process  # noqa: E402
from bench_common import results_header, write_results  # noqa: E402

RESULTS = REPO / "bench" / "results" / "telemetry.json"
GOAL_SHARE = 0.03
SAMPLE_RATE = 1000  # per second
# A sample is telemetry when a frame of its stack is one of these (py-spy's raw format names
# a frame `function (package/file.py:line)`).
TELEMETRY_FRAMES = {
    "request line": ("HostApi._count (", "api/request_log.py"),
    "logging": ("logging/__init__.py", "fractal_hostd/process/logs.py"),
    "sentry": ("sentry_sdk/",),
    "metrics": ("prometheus_client/",),
}
# Under every worker thread (sentry-sdk wraps Thread.run): not work of its own.
NOT_TELEMETRY = "sentry_sdk/integrations/threading.py"


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def telemetry_share(raw: Path) -> dict[str, Any]:
    """Telemetry's share of the samples in a py-spy raw file (`stack count` per line)."""
    total = 0
    hits: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        frames = [f for f in stack.split(";")[1:] if NOT_TELEMETRY not in f]
        joined = ";".join(frames)
        for kind, needles in TELEMETRY_FRAMES.items():
            if any(needle in joined for needle in needles):
                hits[kind] += int(count)  # first kind only: the request line holds the rest
                break
    return {
        "samples": total,
        "share": round(sum(hits.values()) / max(total, 1), 4),
        "by_kind": {kind: round(hits[kind] / max(total, 1), 4) for kind in TELEMETRY_FRAMES},
    }


def load_with_samples(
    url: str, pid: int, script: Path, duration: int, spy: str | None, raw: Path
) -> dict[str, Any]:
    sampler = None
    if spy is not None:
        record = ["record", "-p", str(pid), "-d", str(duration), "-r", str(SAMPLE_RATE)]
        sampler = subprocess.Popen(
            [spy, *record, "-f", "raw", "-o", str(raw), "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    cpu_before = _cpu_seconds(pid)
    result = _wrk(url, script, threads=2, connections=50, duration=duration)
    cpu_ms = (_cpu_seconds(pid) - cpu_before) * 1000 / max(result["requests"], 1)
    measured: dict[str, Any] = {
        "requests_per_s": result["requests_per_s"],
        "cpu_ms_per_request": round(cpu_ms, 3),
    }
    if sampler is not None:
        _, errors = sampler.communicate(timeout=duration + 30)
        if sampler.returncode == 0 and raw.exists():
            measured["py_spy"] = telemetry_share(raw)
        else:
            measured["py_spy_error"] = errors.strip()[-300:]
    return measured


def in_process_costs() -> dict[str, float]:
    """Microseconds per call of each part, as the service sets them up."""
    import sentry_sdk
    from sentry_sdk.scope import Scope, ScopeType

    from fractal_hostd.api.request_log import request_logger
    from fractal_hostd.metrics import Metrics
    from fractal_hostd.process import telemetry
    from fractal_hostd.process.logs import setup_logging

    with open(os.devnull, "w") as devnull:
        saved, sys.stderr = sys.stderr, devnull
        try:
            setup_logging(fmt="json", level="info")
            telemetry.init_sentry(
                dsn="http://public@127.0.0.1:9/1", enabled=True, environment="bench", release="b"
            )
            extra = {
                "method": "PUT",
                "path": "/set_container_dpi",
                "status": 200,
                "latency_ms": 1.23,
                "container_id": "c" * 64,
                "host_port": HOST_PORT,
                "dpi": 96,
            }

            def line() -> None:
                request_logger.log(
                    logging.INFO, "%s %s %d %.1f ms", "PUT", "/set_container_dpi", 200, 1.2,
                    extra=extra,
                )  # fmt: skip

            template = Scope(ty=ScopeType.ISOLATION)

            def scope() -> None:
                outer = Scope.get_isolation_scope()
                Scope.set_isolation_scope(template.fork())
                Scope.set_isolation_scope(outer)

            metrics = Metrics()
            counter = metrics.requests.labels(endpoint="/set_container_dpi", status="200")
            histogram = metrics.request_latency.labels(endpoint="/set_container_dpi")

            def metric() -> None:
                counter.inc()
                histogram.observe(0.0012)

            costs = {}
            for name, fn in (("log_line", line), ("sentry_scope", scope), ("metrics", metric)):
                number = 20_000
                best = min(timeit.repeat(fn, number=number, repeat=5))
                costs[f"{name}_us"] = round(best / number * 1e6, 2)
        finally:
            sys.stderr = saved
            sentry_sdk.get_client().close(timeout=0)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    spy = py_spy()
    if spy is None:
        print("py-spy not found (make install): in-process costs only", flush=True)
    secret = secrets.token_urlsafe(32)
    dpi_body = json.dumps({"host_port": HOST_PORT, "dpi": 96})
    requests = {
        "set_container_dpi": ("PUT", "/set_container_dpi", dpi_body),
        "status": ("GET", "/status", None),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in requests}
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        scripts = {
            name: _lua(workdir / f"{name}.lua", method=method, body=body, secret=secret)
            for name, (method, _, body) in requests.items()
        }
        floors = REPO / "bench" / "bench_floors.py"
        argv = [str(floors), "--serve-service", str(workdir / "service")]
        with server_process(argv, workdir / "service", secret, wait_s=15) as (url, pid):
            _wrk(url + "/health", scripts["status"], threads=1, connections=4, duration=1)
            for round_number in range(args.rounds):
                for name, (_, path, _) in requests.items():
                    raw = workdir / f"{name}-{round_number}.txt"
                    run = load_with_samples(url + path, pid, scripts[name], args.duration, spy, raw)
                    runs[name].append(run)
                    print(f"round {round_number + 1} {name:<18} {json.dumps(run)}", flush=True)
    costs = in_process_costs()
    per_request_us = sum(costs.values())
    summary: dict[str, Any] = {}
    for name, measured in runs.items():
        cpu_us = statistics.median(r["cpu_ms_per_request"] for r in measured) * 1000
        shares = [r["py_spy"]["share"] for r in measured if "py_spy" in r]
        logged = name == "set_container_dpi"  # a successful GET logs at debug: no line
        in_process = per_request_us if logged else per_request_us - costs["log_line_us"]
        summary[name] = {
            "py_spy_share": round(statistics.median(shares), 4) if shares else None,
            "in_process_share": round(in_process / cpu_us, 4),
            "cpu_us_per_request": round(cpu_us),
            "goal": GOAL_SHARE,
        }
    print(json.dumps({"costs_us": costs, "summary": summary}, indent=1))
    write_results(
        RESULTS,
        {
            **results_header("a request's telemetry: py-spy share and in-process costs"),
            "wrk": {"threads": 2, "connections": 50, "duration_s": args.duration},
            "rounds": args.rounds,
            "costs_us": costs,
            "summary": summary,
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
