"""One interface over the two Docker engines the driver runs: the in-process fake (with
faults) and a private real dockerd. The driver only ever asks for these operations and for
`live()`, Docker's own view of which containers are alive."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio

from tests.chaos.fake_engine import ChaosFakeEngine
from tests.fakes.docker_model import BUSYBOX, MANAGED_PORT, HttpError

OPS = ("start", "stop", "kill", "rm", "pause", "unpause", "restart")


@dataclass(frozen=True)
class Live:
    id: str
    host_port: int | None  # bound to 32262/tcp: managed when not None
    paused: bool
    incarnation: str  # changes with every start of the container


class Engine(Protocol):
    socket_path: str

    async def run(
        self, name: str, *, managed: bool, host_port: int | None, always: bool
    ) -> str: ...

    async def op(self, name: str, container_id: str) -> None: ...

    async def live(self) -> dict[str, Live]: ...


class EngineError(Exception):
    """The engine refused an operation (a conflict, a port in use): the driver logs it."""


class FakeEngine:
    def __init__(self, engine: ChaosFakeEngine) -> None:
        self.fake = engine
        self.socket_path = engine.socket_path

    async def run(self, name: str, *, managed: bool, host_port: int | None, always: bool) -> str:
        await trio.lowlevel.checkpoint()
        try:
            container_id = self.fake.create(name, publish=managed, host_port=host_port)
        except HttpError as exc:
            raise EngineError(exc.message) from exc
        try:
            self.fake.start(container_id)
        except HttpError as exc:
            self.fake.remove(container_id)  # like RealEngine.run: no half-made container
            raise EngineError(exc.message) from exc
        return container_id

    async def op(self, name: str, container_id: str) -> None:
        await trio.lowlevel.checkpoint()
        action = {
            "start": self.fake.start,
            "stop": self.fake.stop,
            "kill": self.fake.kill,
            "rm": self.fake.remove,
            "pause": self.fake.pause,
            "unpause": self.fake.unpause,
            "restart": self.fake.restart,
        }[name]
        try:
            action(container_id)
        except HttpError as exc:
            raise EngineError(exc.message) from exc

    async def live(self) -> dict[str, Live]:
        await trio.lowlevel.checkpoint()
        result = {}
        for container in list(self.fake.containers.values()):
            if not container.running:
                continue
            chaos = self.fake.chaos(container.id)
            bindings = container.ports.get(MANAGED_PORT) or []
            port = int(bindings[0]["HostPort"]) if bindings else None
            result[container.id] = Live(container.id, port, chaos.paused, str(chaos.starts))
        return result


class RealEngine:
    """A real dockerd over its API (the private one of tests/chaos/dockerd.py)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://docker/v1.41",
            timeout=httpx.Timeout(30.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise EngineError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise EngineError(f"{method} {path}: {response.status_code} {response.text.strip()}")
        return response

    async def run(self, name: str, *, managed: bool, host_port: int | None, always: bool) -> str:
        host_config: dict[str, object] = {"NetworkMode": "bridge"}
        body: dict[str, object] = {"Image": BUSYBOX, "Cmd": ["sleep", "100000"]}
        if managed:
            body["ExposedPorts"] = {MANAGED_PORT: {}}
            host_config["PortBindings"] = {
                MANAGED_PORT: [{"HostIp": "127.0.0.1", "HostPort": str(host_port or "")}]
            }
        if always:
            host_config["RestartPolicy"] = {"Name": "always"}
        body["HostConfig"] = host_config
        response = await self._call("POST", "/containers/create", params={"name": name}, json=body)
        container_id: str = response.json()["Id"]
        try:
            await self._call("POST", f"/containers/{container_id}/start")
        except EngineError:
            await self._call("DELETE", f"/containers/{container_id}", params={"force": "1"})
            raise
        return container_id

    async def op(self, name: str, container_id: str) -> None:
        path = f"/containers/{container_id}"
        if name == "rm":
            await self._call("DELETE", path, params={"force": "1"})
        elif name in ("stop", "restart"):
            await self._call("POST", f"{path}/{name}", params={"t": "1"})
        else:
            await self._call("POST", f"{path}/{name}")

    async def live(self) -> dict[str, Live]:
        listed = (await self._call("GET", "/containers/json")).json()
        result = {}
        for summary in listed:
            try:
                inspect = (await self._call("GET", f"/containers/{summary['Id']}/json")).json()
            except EngineError:
                continue  # gone meanwhile
            state = inspect["State"]
            if not state.get("Running"):
                continue
            bindings = ((inspect.get("NetworkSettings") or {}).get("Ports") or {}).get(MANAGED_PORT)
            port = int(bindings[0]["HostPort"]) if bindings else None
            result[inspect["Id"]] = Live(
                inspect["Id"], port, bool(state.get("Paused")), str(state.get("StartedAt"))
            )
        return result

    async def remove_all(self) -> None:
        for summary in (await self._call("GET", "/containers/json", params={"all": "1"})).json():
            with contextlib.suppress(EngineError):
                await self.op("rm", summary["Id"])
