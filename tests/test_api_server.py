"""The API over real TLS: hypercorn on loopback port 0, httpx verifying the generated cert.

Test rules: localhost only, port 0, an absolute `trio.fail_after` around every test.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from fractal_hostd.api.server import _CoalescedWrites, _ShieldedSend, hypercorn_config
from fractal_hostd.api.tls import generate_certificate
from fractal_hostd.containers.registry import ContainerRecord
from tests.api_fixtures import AUTH, Running, running_api, tls_client

TIMEOUT = 10


def announce_waits(running: Running) -> trio.Event:
    """An event set once a request starts waiting for its container (the registry patched)."""
    waiting = trio.Event()
    real_wait = running.api.registry.wait_for_host_port

    async def signalling_wait(host_port: int) -> ContainerRecord:
        waiting.set()
        return await real_wait(host_port)

    running.api.registry.wait_for_host_port = signalling_wait  # type: ignore[method-assign]
    return waiting


async def test_started_reports_the_bound_url_and_tls_answers(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running, tls_client(running) as client:
            assert running.url.startswith("https://127.0.0.1:")
            assert not running.url.endswith(":0")
            await running.api.add_container(40000)
            health = await client.get("/health")
            assert health.json()["status"] == "ok"
            assert "server" not in health.headers
            answer = await client.put(
                "/set_container_dpi", json={"host_port": 40000, "dpi": 144}, headers=AUTH
            )
            assert answer.status_code == 200
            assert running.api.mapping_file(40000, "DPI").read_text() == "144"
            assert running.api.mapping_file(40000, ".ready").exists()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running:
            host, port = running.url.removeprefix("https://").rsplit(":", 1)
            context = ssl.create_default_context(cafile=str(running.tls.certfile))
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            try:
                context.set_ciphers("ALL:@SECLEVEL=0")
            except ssl.SSLError:
                pytest.skip("this OpenSSL cannot even offer TLS 1.1")
            stream = await trio.open_tcp_stream(host, int(port))
            tls_stream = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
            with pytest.raises(trio.BrokenResourceError) as refused:
                await tls_stream.do_handshake()
            assert isinstance(refused.value.__cause__, ssl.SSLError)
            await stream.aclose()


def test_the_server_context_requires_tls_1_2(tmp_path: Path) -> None:
    tls = generate_certificate(tmp_path)
    config = hypercorn_config(
        bind="127.0.0.1:0", certfile=tls.certfile, keyfile=tls.keyfile, graceful_timeout=1
    )
    context = config.create_ssl_context()
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


async def test_tls_1_2_and_1_3_are_accepted(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running:
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                context = ssl.create_default_context(cafile=str(running.tls.certfile))
                context.minimum_version = context.maximum_version = version
                async with httpx.AsyncClient(base_url=running.url, verify=context) as client:
                    assert (await client.get("/health")).status_code == 200


async def test_a_client_offering_http2_is_answered_in_http_1_1(tmp_path: Path) -> None:
    """HTTP/1.1 only: ALPN never selects h2. hypercorn's HTTP/2 code let a client end the
    whole server (KeyError for DATA on a stream it already answered: a 413 for an oversized
    body, a 404 for an unknown path); over HTTP/1.1 those are plain answers."""
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running:
            verify = ssl.create_default_context(cafile=str(running.tls.certfile))
            for path, status in (("/set_container_dpi", 413), ("/no_such_path", 404)):
                async with httpx.AsyncClient(
                    base_url=running.url, verify=verify, http2=True
                ) as client:
                    try:
                        answer = await client.put(path, content=b" " * 200_000, headers=AUTH)
                    except httpx.TransportError:
                        pass  # answered and closed before the body was all sent: HTTP/1.1's way
                    else:
                        assert (answer.http_version, answer.status_code) == ("HTTP/1.1", status)
            async with httpx.AsyncClient(base_url=running.url, verify=verify, http2=True) as c:
                answer = await c.get("/health")
            assert (answer.http_version, answer.status_code) == ("HTTP/1.1", 200)


async def _raw_exchange(running: Running, request: bytes) -> bytes:
    """Send `request` over a TLS connection that settled HTTP/1.1 by ALPN (the ways into
    HTTP/2 tried here are in-band); what comes back before the server closes or goes quiet."""
    context = ssl.create_default_context(cafile=str(running.tls.certfile))
    context.set_alpn_protocols(["http/1.1"])
    port = int(running.url.rsplit(":", 1)[1])
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    await stream.do_handshake()
    assert stream.selected_alpn_protocol() == "http/1.1"
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.move_on_after(1):
            while chunk := await stream.receive_some():
                received += chunk
                if b"\r\n\r\n" in received:
                    break
    return received


async def test_an_h2c_upgrade_is_ignored(tmp_path: Path) -> None:
    """`Upgrade: h2c` is just a header: the answer is HTTP/1.1 200, not 101 then HTTP/2."""
    request = (
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running:
            answer = await _raw_exchange(running, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:40]


async def test_the_http2_preface_is_not_taken_as_http2(tmp_path: Path) -> None:
    """HTTP/2 by prior knowledge (its preface, then a SETTINGS frame) gets an HTTP/1.1 answer
    and the server goes on."""
    settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running, tls_client(running) as client:
            answer = await _raw_exchange(
                running, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame
            )
            assert answer.startswith(b"HTTP/1.1 4"), answer[:40]
            assert (await client.get("/health")).status_code == 200


async def test_an_in_flight_request_completes_during_graceful_shutdown(tmp_path: Path) -> None:
    """The request waits for its container; shutdown starts; the container appears: 200."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_api(tmp_path, container_wait=5.0) as running,
            tls_client(running) as client,
        ):
            answers: list[httpx.Response] = []
            waiting = announce_waits(running)

            async def slow_request() -> None:
                answers.append(
                    await client.put(
                        "/set_container_dpi", json={"host_port": 40001, "dpi": 96}, headers=AUTH
                    )
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_request)
                await waiting.wait()  # the request is in its handler, waiting for the container
                running.stop.set()
                await trio.sleep(0.2)
                # New connections are refused once shutdown started...
                with pytest.raises(httpx.ConnectError):
                    async with tls_client(running) as fresh:
                        await fresh.get("/health")
                # ...while the request in flight still gets its answer.
                await running.api.add_container(40001)
            assert answers[0].status_code == 200
            assert running.api.mapping_file(40001, ".ready").exists()


async def test_an_idle_keep_alive_connection_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """quart-trio's per-request cancel used to stop hypercorn's idle timer, so an idle
    keep-alive connection kept the drain waiting for the whole graceful timeout."""
    with trio.fail_after(TIMEOUT):
        # graceful_timeout far beyond fail_after: waiting for it fails the test.
        async with running_api(tmp_path, graceful_timeout=60.0) as running:
            client = tls_client(running)
            assert (await client.get("/health")).status_code == 200
            running.stop.set()
        await client.aclose()


async def _one_small_answer(
    scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def blocked_last_send(shielded: _ShieldedSend) -> list[float]:
    """How long each send of `shielded` held on, in a scope already cancelled (the graceful
    timeout expired), for a client that never reads."""
    blocked_for: list[float] = []

    async def window_never_opens(message: ASGISendEvent) -> None:
        started = trio.current_time()
        try:
            with trio.move_on_after(3600):  # a regression ends here instead of hanging
                await trio.sleep_forever()
        finally:
            blocked_for.append(trio.current_time() - started)

    async def receive() -> ASGIReceiveEvent:
        raise AssertionError("not called")

    with trio.CancelScope() as expired:
        expired.cancel()
        await shielded({"type": "http"}, receive, window_never_opens)  # type: ignore[arg-type]
    return blocked_for


async def test_the_shielded_last_send_gives_up_after_its_limit(autojump_clock: object) -> None:
    """The last send waits for the client to read. Shielded without a bound, a client that
    never read (seen with an h2 client advertising a window of 0, when hypercorn still spoke
    HTTP/2) held it out of reach of the graceful timeout's cancel: SIGTERM never ended it."""
    assert await blocked_last_send(_ShieldedSend(_one_small_answer, limit=3.0)) == [3.0]


async def test_a_last_send_begun_during_the_drain_gets_only_what_is_left_of_it(
    autojump_clock: object,
) -> None:
    """The stop path's bound counts the drain once: a send that starts 2.5 s into a 3 s drain
    may hold the shield 0.5 s, not another whole graceful timeout."""
    shielded = _ShieldedSend(_one_small_answer, limit=3.0)
    shielded.drain_deadline = trio.current_time() + 0.5
    assert await blocked_last_send(shielded) == [0.5]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_bind_reports_a_bracketed_url(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path, bind="[::1]:0") as running:
            assert running.url.startswith("https://[::1]:")
            async with tls_client(running) as client:
                assert (await client.get("/health")).status_code == 200


async def _tls_connection(running: Running) -> trio.SSLStream[trio.SocketStream]:
    host, port = running.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(running.tls.certfile))
    stream = trio.SSLStream(
        await trio.open_tcp_stream(host, int(port)), context, server_hostname=host
    )
    await stream.do_handshake()
    return stream


async def _is_refused(host: str, port: int) -> bool:
    """The server resets (or closes) the connection without a byte: no TLS handshake at all."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return True  # on loopback the reset can beat the end of connect()
    async with stream:
        try:
            await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:
            return True


async def test_connections_over_the_cap_are_refused_before_tls_and_counted(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path, max_connections=2) as running:
            host, port = running.url.removeprefix("https://").rsplit(":", 1)
            held = [await _tls_connection(running), await _tls_connection(running)]
            assert await _is_refused(host, int(port))
            await held.pop().aclose()
            # A slot is free again: a client is served, and /metrics counts the refusal.
            async with tls_client(running) as client:
                for _ in range(50):  # the server notices the close asynchronously
                    try:
                        metrics = await client.get("/metrics", headers=AUTH)
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
            assert metrics.status_code == 200
            assert "fractal_hostd_api_connections_refused_total 1.0" in metrics.text
            assert "fractal_hostd_api_connections_open 2.0" in metrics.text
            for stream in held:
                await stream.aclose()


async def test_a_request_waiting_for_its_container_does_not_hold_up_the_others(
    tmp_path: Path,
) -> None:
    """One request slot: the waiting request gives it up after its lease (see api/slots.py)."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_api(tmp_path, container_wait=5.0, request_slots=1) as running,
            tls_client(running) as waiting_client,
            tls_client(running) as client,
        ):
            waiting = announce_waits(running)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        waiting_client.put,
                        "/set_container_dpi",
                        json={"host_port": 40002, "dpi": 96},
                        headers=AUTH,
                    )
                )
                await waiting.wait()
                with trio.fail_after(2):  # far below the 5 s the other request waits
                    assert (await client.get("/health")).status_code == 200
                await running.api.add_container(40002)


async def test_a_get_with_a_body_has_its_credentials_checked_however_it_is_framed(
    tmp_path: Path,
) -> None:
    """A GET skips reading a body only when no header announces one: a wrong secret sent
    in a body (with a length, or chunked) still refuses the request."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"auth_secret": '
        yield b'"wrong"}'

    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running, tls_client(running) as client:
            plain = await client.get("/status", headers=AUTH)
            sized = await client.request(
                "GET", "/status", headers=AUTH, content=b'{"auth_secret": "wrong"}'
            )
            chunked = await client.request("GET", "/status", headers=AUTH, content=chunks())
    assert "content-length" in sized.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert (plain.status_code, sized.status_code, chunked.status_code) == (200, 401, 401)


async def test_a_response_leaves_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its head waits for its body, and the end of a sized body writes nothing."""
    writes: list[bytes] = []
    write = TCPServer.protocol_send

    async def recording_write(self: TCPServer, event: Event) -> None:
        if isinstance(event, RawData):
            writes.append(event.data)
        await write(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", recording_write)
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path) as running, tls_client(running) as client:
            await running.api.add_container(40000)
            body = {"host_port": 40000, "dpi": 96}
            for method, path in (("GET", "/health"), ("PUT", "/set_container_dpi"), ("GET", "/x")):
                writes.clear()
                answer = await client.request(method, path, json=body, headers=AUTH)
                await trio.sleep(0.05)  # a write after the answer (the old empty end) shows
                assert len(writes) == 1, (path, writes)
                assert writes[0].startswith(f"HTTP/1.1 {answer.status_code} ".encode())
                assert writes[0].endswith(answer.content)


async def test_a_held_head_leaves_before_whatever_comes_instead_of_its_body() -> None:
    sent: list[Event] = []

    async def send(event: Event) -> None:
        sent.append(event)

    writes = _CoalescedWrites(send)
    writes.holding = True
    await writes(RawData(data=b"HEAD"))
    writes.holding = False
    assert sent == []
    await writes(RawData(data=b"BODY"))
    await writes(RawData(data=b""))  # the end of a sized body: nothing to write
    assert sent == [RawData(data=b"HEADBODY")]
    writes.holding = True
    await writes(RawData(data=b"HEAD2"))
    writes.holding = False
    await writes(Closed())  # the connection closes before a body came: the head goes first
    assert sent[1:] == [RawData(data=b"HEAD2"), Closed()]
