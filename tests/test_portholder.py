"""Naming the holder of a TCP port from /proc (issue 13 item 6): against this very process,
and against a made-up /proc for the parsing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fractal_hostd.process.portholder import describe_port_holder, listening_inodes


def test_names_this_process_as_the_holder_of_its_listening_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert f"held by pid {os.getpid()} (" in describe_port_holder(port)
    assert describe_port_holder(port).startswith("no listening process found")


def test_an_ipv6_listener_is_found_and_other_states_are_not(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt ...\n"
    (tmp_path / "net" / "tcp").write_text(
        header
        # 4678 = 0x1246: one established connection (01), not a listener
        + "   0: 0100007F:1246 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 "
        "0 0 111 1\n"
    )
    (tmp_path / "net" / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000000000000:1246 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 222 1\n"
    )
    assert listening_inodes(4678, proc=tmp_path) == {"222"}
    fd_dir = tmp_path / "4242" / "fd"
    fd_dir.mkdir(parents=True)
    (fd_dir / "3").symlink_to("socket:[222]")
    (tmp_path / "4242" / "cmdline").write_bytes(b"nginx: master process\0-g\0daemon off;\0")
    assert describe_port_holder(4678, tmp_path) == (
        "held by pid 4242 (nginx: master process -g daemon off;)"
    )


def test_an_unreadable_proc_is_said_not_raised(tmp_path: Path) -> None:
    assert describe_port_holder(4678, tmp_path / "missing").startswith("no listening process")


def test_only_listeners_a_bind_would_collide_with_count(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    row = " 0: {addr}:1246 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 {inode} 1\n"
    (tmp_path / "net" / "tcp").write_text(
        "header\n"
        + row.format(addr="0100007F", inode="1")  # 127.0.0.1
        + row.format(addr="0200007F", inode="2")  # 127.0.0.2
    )
    (tmp_path / "net" / "tcp6").write_text(
        "header\n"
        + row.format(addr="0000000000000000FFFF00000100000A", inode="3")  # ::ffff:10.0.0.1
    )
    assert listening_inodes(4678, "127.0.0.1", proc=tmp_path) == {"1"}
    assert listening_inodes(4678, "10.0.0.1", proc=tmp_path) == {"3"}
    assert listening_inodes(4678, "0.0.0.0", proc=tmp_path) == {"1", "2", "3"}
    assert listening_inodes(4678, "10.9.9.9", proc=tmp_path) == set()
    (tmp_path / "net" / "tcp").write_text("header\n" + row.format(addr="00000000", inode="4"))
    assert listening_inodes(4678, "10.9.9.9", proc=tmp_path) == {"4"}  # 0.0.0.0 listens
