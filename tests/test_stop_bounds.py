"""The whole stop path with every peer stuck at once, in virtual time (contract §7, issue 9).

The real `Service` runs in-process under `autojump_clock`; its peers are stubbed at their
seams to never answer: the API never drains (hypercorn hung), the dying heartbeat never gets
an answer (webserver blackholed), the Sentry flush hangs, and unmounting the cloud storage
never returns. The stop must still end within `stop_path_bound`, which the systemd unit's
TimeoutStopSec must exceed by 2 s.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fractal_hostd import supervisor
from fractal_hostd.api import bootstrap
from fractal_hostd.config import Config, Secret
from fractal_hostd.process import telemetry
from fractal_hostd.supervisor import (
    API_DRAIN_MARGIN,
    API_GRACEFUL_TIMEOUT,
    UNMOUNT_ALL_TIMEOUT,
    Service,
    stop_path_bound,
)
from fractal_hostd.webserver.client import WebserverClient

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "fractal-hostd.service"


class Stuck:
    """Records every call into a stuck peer."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def forever(self, what: str) -> None:
        self.calls.append(what)
        await trio.sleep_forever()


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Stuck:
    peers = Stuck()

    async def api(app: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED, **kwargs: Any) -> None:
        task_status.started("https://127.0.0.1:4678")
        await peers.forever("api")  # ignores its shutdown trigger: a hung hypercorn

    async def events(*args: Any, task_status: Any = trio.TASK_STATUS_IGNORED, **kw: Any) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def handshake(self: WebserverClient, *args: Any, **kwargs: Any) -> str:
        return "token"

    async def heartbeat(self: WebserverClient, payload: dict[str, Any]) -> bool:
        if payload["HeartbeatNumber"] == 0:
            return True  # start-up completes; then the webserver goes dark
        await peers.forever("dying heartbeat" if payload["IsDyingHeartbeat"] else "heartbeat")
        return False

    async def flush() -> None:
        await peers.forever("sentry flush")

    monkeypatch.setattr(bootstrap, "serve_api", api)
    monkeypatch.setattr(supervisor, "run_event_stream", events)
    monkeypatch.setattr(WebserverClient, "handshake", handshake)
    monkeypatch.setattr(WebserverClient, "send_heartbeat", heartbeat)
    monkeypatch.setattr(telemetry, "flush_and_close", flush)
    return peers


async def test_whole_stop_with_every_peer_stuck_stays_within_its_bound(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, stuck: Stuck
) -> None:
    config = Config(
        root=tmp_path / "root",
        private_dir=tmp_path / "private",
        docker_socket=tmp_path / "docker.sock",
        api_port=0,
        webserver_url="http://127.0.0.1:9",
        webserver_auth_secret=Secret("secret"),
    )
    service = Service(config)

    async def unmount_all() -> None:
        await stuck.forever("unmount")  # an unmount that never returns

    service.cloud_storage.unmount_all = unmount_all  # type: ignore[method-assign]
    codes: list[int] = []

    async def run() -> None:
        codes.append(await service.run())

    # Virtual seconds: fires (rather than hanging the suite) when a bound does not hold.
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while service.state.last_heartbeat is None:
                await trio.sleep(0.01)
            await trio.sleep(1)
            stopped_at = trio.current_time()
            os.kill(os.getpid(), signal.SIGTERM)  # the receiver the service holds takes it
    elapsed = trio.current_time() - stopped_at

    print(f"\nwhole stop, every peer stuck (virtual time): {elapsed:.2f} s")
    assert codes == [0]
    assert {"api", "unmount", "dying heartbeat", "sentry flush"} <= set(stuck.calls)
    # Each stuck peer ran into its own bound, and together they fit the computed worst case.
    least = API_GRACEFUL_TIMEOUT + API_DRAIN_MARGIN + UNMOUNT_ALL_TIMEOUT
    least += config.shutdown_report_timeout
    assert least <= elapsed <= stop_path_bound(config)


def test_unit_timeout_stop_exceeds_the_worst_case_by_2_s() -> None:
    match = re.search(r"^TimeoutStopSec=(\d+)\s*$", UNIT.read_text(), re.MULTILINE)
    assert match is not None
    assert stop_path_bound(Config()) <= int(match.group(1)) - 2
