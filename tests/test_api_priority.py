"""The served API waits while a container starts: the lifecycle's hold reaches the server
that `start_api` serves (fractal_hostd/event_priority.py, docs/api.md)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import httpx
import trio

from fractal_hostd.api.bootstrap import start_api
from fractal_hostd.api.tls import CERT_FILE_NAME
from fractal_hostd.config import Config
from fractal_hostd.event_priority import EventPriority
from tests.api_fixtures import make_api
from tests.instance_fixtures import METADATA


async def test_a_request_to_the_served_api_waits_while_a_container_starts(
    tmp_path: Path,
) -> None:
    api = make_api(tmp_path / "api")
    # A hold that lasts until released: the service's own ends after 20 ms at most.
    api.lifecycle.priority = priority = EventPriority(limit=60)
    config = Config(root=tmp_path / "root", private_dir=tmp_path / "private", api_port=0)
    stop = trio.Event()
    answered: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await start_api(
                nursery,
                config,
                METADATA,
                state=api.state,
                registry=api.registry,
                lifecycle=api.lifecycle,
                metrics=api.metrics,
                cloud_storage=None,
                shutdown_trigger=stop.wait,
                graceful_timeout=1.0,
            )
            verify = ssl.create_default_context(cafile=str(config.private_dir / CERT_FILE_NAME))
            async with httpx.AsyncClient(base_url=url, verify=verify) as client:

                async def ask() -> None:
                    answered.append((await client.get("/health")).status_code)

                with contextlib.ExitStack() as start:
                    start.enter_context(priority.hold())
                    nursery.start_soon(ask)
                    while priority.requests_waiting == 0:
                        await trio.sleep(0.01)
                    assert answered == []
                while not answered:
                    await trio.sleep(0.01)
            stop.set()
    assert answered == [200]
