"""ContainerInfo.from_inspect: managed = 32262/tcp published; never raises on odd JSON."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_hostd.containers.info import ContainerInfo, is_container_id

CID = "0123456789abcdef" * 4


def inspect_json(
    *, ports: Any = None, bindings: Any = None, running: Any = True, cid: Any = CID
) -> dict[str, Any]:
    return {
        "Id": cid,
        "State": {"Running": running, "Status": "running" if running else "exited"},
        "NetworkSettings": {"Ports": ports},
        "HostConfig": {"PortBindings": bindings},
    }


def test_managed_running_container() -> None:
    ports = {
        "32262/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "40001"},
            {"HostIp": "::", "HostPort": "40001"},
        ],
        "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "5000"}],
    }
    info = ContainerInfo.from_inspect(inspect_json(ports=ports))
    assert info == ContainerInfo(id=CID, host_port=40001, running=True)


def test_falls_back_to_port_bindings_when_not_running() -> None:
    # Docker empties NetworkSettings.Ports once a container has stopped.
    bindings = {"32262/tcp": [{"HostIp": "", "HostPort": "40002"}]}
    info = ContainerInfo.from_inspect(inspect_json(ports={}, bindings=bindings, running=False))
    assert info == ContainerInfo(id=CID, host_port=40002, running=False)


def test_network_settings_win_over_port_bindings() -> None:
    # "-p 32262" asks for a random port: PortBindings says "", Ports says what was chosen.
    info = ContainerInfo.from_inspect(
        inspect_json(
            ports={"32262/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}]},
            bindings={"32262/tcp": [{"HostIp": "", "HostPort": ""}]},
        )
    )
    assert info.host_port == 49153


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"Id": CID},
        {"Id": CID, "State": None, "NetworkSettings": None, "HostConfig": None},
        inspect_json(ports={"32262/tcp": None}),
        inspect_json(ports={"32262/tcp": []}),
        inspect_json(ports={"32262/tcp": [None, "x", {"HostPort": None}]}),
        inspect_json(ports={"32262/tcp": [{"HostPort": "0"}]}),
        inspect_json(ports={"32262/tcp": [{"HostPort": "65536"}]}),
        inspect_json(ports={"32262/tcp": [{"HostPort": "-1"}]}),
        inspect_json(ports={"32262/tcp": [{"HostPort": "4 0"}]}),
        inspect_json(ports={"32262/tcp": [{"HostPort": True}]}),
        inspect_json(ports={"32262/udp": [{"HostPort": "40000"}]}),
        inspect_json(ports=[1, 2], bindings="x"),
        inspect_json(bindings={"32262/tcp": [{"HostPort": ""}]}),
    ],
)
def test_not_managed_or_malformed_gives_no_port(doc: dict[str, Any]) -> None:
    assert ContainerInfo.from_inspect(doc).host_port is None


@pytest.mark.parametrize("cid", [None, 42, "abc", "../" + CID[3:], CID + "0", "g" * 64])
def test_unusable_id_is_never_managed(cid: Any) -> None:
    info = ContainerInfo.from_inspect(
        inspect_json(cid=cid, ports={"32262/tcp": [{"HostPort": "40000"}]})
    )
    assert info.host_port is None


def test_uppercase_id_is_normalised() -> None:
    info = ContainerInfo.from_inspect(
        inspect_json(cid=CID.upper(), ports={"32262/tcp": [{"HostPort": "40000"}]})
    )
    assert info.id == CID
    assert info.host_port == 40000


@pytest.mark.parametrize("running", [False, None, "true", 1])
def test_running_only_when_state_running_is_true(running: Any) -> None:
    assert not ContainerInfo.from_inspect(inspect_json(running=running)).running


def test_is_container_id() -> None:
    assert is_container_id(CID)
    assert not is_container_id(CID.upper())
    assert not is_container_id(CID[:12])
    assert not is_container_id(None)


# Trimmed from `docker inspect` on Docker 20.10 (API 1.41): `-p 127.0.0.1::32262 -p 32262/udp`,
# running and then killed.
REAL_ID = "dd16a43aa13c41c9632a48e6f753e3fc878b6c46038c625e396f82d26158e96d"
REAL_RUNNING: dict[str, Any] = {
    "Id": REAL_ID,
    "State": {"Status": "running", "Running": True, "Paused": False, "Pid": 4242},
    "HostConfig": {
        "PortBindings": {
            "32262/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
            "32262/udp": [{"HostIp": "", "HostPort": ""}],
        }
    },
    "NetworkSettings": {
        "Ports": {
            "32262/tcp": [{"HostIp": "127.0.0.1", "HostPort": "33069"}],
            "32262/udp": [
                {"HostIp": "0.0.0.0", "HostPort": "32768"},
                {"HostIp": "::", "HostPort": "32768"},
            ],
        }
    },
}
REAL_KILLED: dict[str, Any] = {
    **REAL_RUNNING,
    "State": {"Status": "exited", "Running": False, "ExitCode": 137},
    "NetworkSettings": {"Ports": {}},
}


def test_real_inspect_documents() -> None:
    assert ContainerInfo.from_inspect(REAL_RUNNING) == ContainerInfo(REAL_ID, 33069, True)
    # Stopped, random port: Docker no longer shows which port it was.
    assert ContainerInfo.from_inspect(REAL_KILLED) == ContainerInfo(REAL_ID, None, False)


def test_a_paused_container_is_live() -> None:
    # As dockerd 20.10 reports it: Running and Paused both true, Status "paused".
    doc = inspect_json(ports={"32262/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40003"}]})
    doc["State"] = {"Status": "paused", "Running": True, "Paused": True}
    assert ContainerInfo.from_inspect(doc) == ContainerInfo(id=CID, host_port=40003, running=True)
    doc["State"] = {"Status": "paused", "Paused": True}  # either field is enough
    assert ContainerInfo.from_inspect(doc).running


def test_a_listing_entry_gives_the_liveness_and_port() -> None:
    summary = {
        "Id": CID.upper(),
        "State": "paused",
        "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": 8080, "PublicPort": 5000, "Type": "tcp"},
            {"IP": "127.0.0.1", "PrivatePort": 32262, "PublicPort": 40004, "Type": "udp"},
            {"IP": "127.0.0.1", "PrivatePort": 32262, "PublicPort": 40005, "Type": "tcp"},
        ],
    }
    assert ContainerInfo.from_summary(summary) == ContainerInfo(CID, 40005, running=True)
    assert not ContainerInfo.from_summary({**summary, "State": "exited"}).running
    assert ContainerInfo.from_summary({**summary, "Ports": None}).host_port is None
    assert ContainerInfo.from_summary({"Id": "../x", "State": "running"}).host_port is None
    assert ContainerInfo.from_summary({}) == ContainerInfo("", None, running=False)
