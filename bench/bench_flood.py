"""Connection flood against the real service (`make bench`; numbers only, never asserted).

Starts `python -m fractal_hostd run` against the fakes (webserver, IMDS, Sentry, Docker) on
loopback, waits for its first heartbeat, notes its RSS (the baseline), then opens
2,000 idle + 2,000 slow TLS connections to the API at once:
  * idle: TCP connect, TLS handshake, then nothing;
  * slow: TCP connect, TLS handshake, then a request trickled one byte every 0.5 s.
Each client holds its connection until the server closes it or `--hold` seconds pass. Then
the connections are gone and RSS is sampled for `--after` seconds (goal: back to at most
1.3x the baseline within 30 s). Recorded: baseline, peak and final RSS, the time RSS took
to come back under 1.3x, connections admitted / refused (by the server's /metrics), for the
service as shipped (FRACTAL_API_MAX_CONNECTIONS default) and with the cap lifted (to show
what one admitted connection costs). Writes bench/results/flood.json.

    python bench/bench_flood.py [--idle 2000] [--slow 2000] [--hold 15] [--after 30]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_common import results_header, write_results  # noqa: E402

from tests.service_harness import (  # noqa: E402
    AUTH_SECRET,
    running_peers,
    running_service,
    service_env,
)

RESULTS = REPO / "bench" / "results" / "flood.json"
GOAL_RATIO = 1.3
START_BOUND = 60
HANDSHAKES_AT_ONCE = 200  # the client's own concurrency, so its CPU does not decide the result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Flood:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, hold: float) -> None:
        self.host, self.port, self.context, self.hold = host, port, context, hold
        self.counts = {"handshaken": 0, "refused": 0, "closed_by_server": 0, "held_to_end": 0}
        self.handshakes = trio.CapacityLimiter(HANDSHAKES_AT_ONCE)

    async def client(self, slow: bool) -> None:
        async with self.handshakes:
            try:
                tcp = await trio.open_tcp_stream(self.host, self.port)
            except OSError:
                self.counts["refused"] += 1
                return
            stream = trio.SSLStream(tcp, self.context, server_hostname=self.host)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                self.counts["refused"] += 1
                await trio.aclose_forcefully(tcp)
                return
        self.counts["handshaken"] += 1
        try:
            with trio.move_on_after(self.hold) as held:
                if slow:
                    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"y" * 400
                    for byte in request:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.5)
                await stream.receive_some()  # b"" or an error: the server closed it
            self.counts["held_to_end" if held.cancelled_caught else "closed_by_server"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.counts["closed_by_server"] += 1
        finally:
            await trio.aclose_forcefully(stream)


async def scenario(
    name: str, args: argparse.Namespace, extra_env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        tmp_path = Path(tmp)
        async with running_peers(tmp_path) as peers:
            env = service_env(tmp_path, peers, FRACTAL_LOG_LEVEL="debug", **extra_env)
            async with running_service(tmp_path, env) as service:
                with trio.fail_after(START_BOUND):
                    await peers.webserver.wait_for_heartbeats(1)
                await trio.sleep(2)  # start-up garbage settles
                pid = service.process.pid
                url = (tmp_path / "private" / "api_url").read_text().strip()
                context = ssl.create_default_context(cafile=str(tmp_path / "private" / "cert.pem"))
                host, port = url.removeprefix("https://").rsplit(":", 1)
                baseline = rss_mb(pid)
                samples: list[tuple[float, float]] = []
                flood = Flood(host, int(port), context, args.hold)
                started = time.monotonic()

                async def sample() -> None:
                    while True:
                        samples.append((time.monotonic() - started, rss_mb(pid)))
                        await trio.sleep(0.25)

                async with trio.open_nursery() as sampler:
                    sampler.start_soon(sample)
                    with trio.fail_after(args.hold + 60):
                        async with trio.open_nursery() as clients:
                            for i in range(args.idle + args.slow):
                                clients.start_soon(flood.client, i >= args.idle)
                    ended = time.monotonic() - started
                    await trio.sleep(args.after)
                    sampler.cancel_scope.cancel()
                async with httpx.AsyncClient(base_url=url, verify=context) as api:
                    metrics = (
                        await api.get(
                            "/metrics", headers={"Authorization": f"Bearer {AUTH_SECRET}"}
                        )
                    ).text
                service.send_signal()
                with trio.fail_after(30):
                    await service.wait()
                log = service.logs()
    peak = max(rss for _, rss in samples)
    after = [(t - ended, rss) for t, rss in samples if t >= ended]
    back_at = next(
        (t for t, rss in after if all(r <= GOAL_RATIO * baseline for _, r in after if _ >= t)),
        None,
    )
    refused = [
        line.split()[-1]
        for line in metrics.splitlines()
        if line.startswith("fractal_hostd_api_connections_refused_total")
    ]
    result = {
        "service_env": extra_env,
        "clients": {"idle": args.idle, "slow": args.slow, "hold_s": args.hold},
        "client_counts": flood.counts,
        "server_refused_total": float(refused[0]) if refused else None,
        "flood_lasted_s": round(ended, 1),
        "rss_mb": {
            "baseline": round(baseline, 1),
            "peak": round(peak, 1),
            "end_of_flood": round(after[0][1], 1) if after else None,
            "after": round(after[-1][1], 1) if after else None,
            "seconds_after_flood": args.after,
        },
        "peak_ratio": round(peak / baseline, 2),
        "final_ratio": round(after[-1][1] / baseline, 2) if after else None,
        "seconds_until_within_goal": round(back_at, 1) if back_at is not None else None,
    }
    result["malloc_trims"] = log.count("gave free heap back")
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "as_shipped": await scenario("as_shipped", args, {}),
        "uncapped": await scenario(
            "uncapped", args, {"FRACTAL_API_MAX_CONNECTIONS": str(args.idle + args.slow + 100)}
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--after", type=float, default=30.0)
    args = parser.parse_args()
    scenarios = trio.run(run, args)
    result = {
        **results_header("connection flood against the real service (bench/bench_flood.py)"),
        "goal": f"RSS back to at most {GOAL_RATIO}x the baseline within 30 s",
        "scenarios": scenarios,
    }
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
