"""Who holds a TCP port: for "address already in use" messages that say what to stop.

Best effort, Linux only, no dependencies: the listening socket's inode comes from
/proc/net/tcp and /proc/net/tcp6 (state 0A = LISTEN), and the process from the
`socket:[inode]` links in /proc/<pid>/fd. Without root only this user's processes can be
searched; then the answer says the holder could not be named. Never raises: it only
improves an error message.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

_LISTEN = "0A"


def listening_inodes(port: int, host: str | None = None, proc: Path = Path("/proc")) -> set[str]:
    """Inodes of the sockets listening on `port` that a bind to `host` would collide with
    (None: any address). A wildcard listener (0.0.0.0, ::) collides with every host, and a
    bind to a wildcard with every listener."""
    wanted = _address(host) if host is not None else None
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            hex_address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) != port:
                continue
            if wanted is None or _collides(wanted, _proc_address(hex_address)):
                inodes.add(fields[9])
    return inodes


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None  # not an address: collide with everything (best effort)


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """/proc/net/tcp{,6} addresses: hex of the bytes in host order, 32 bits at a time."""
    try:
        raw = bytes.fromhex(hex_address)
    except ValueError:
        return None
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    if len(words) == 16:
        address = ipaddress.IPv6Address(words)
        return address.ipv4_mapped or address
    return None


def _collides(
    wanted: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    listening: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> bool:
    if wanted is None or listening is None:
        return True
    if wanted.is_unspecified or listening.is_unspecified:
        return True
    return wanted == listening


def socket_owners(inodes: set[str], proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of the processes holding any of these socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    owners: list[tuple[int, str]] = []
    try:
        pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in wanted:
                owners.append((pid, _command(proc, pid)))
                break
    return owners


def _command(proc: Path, pid: int) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        raw = b""
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    if not command:
        try:
            command = (proc / str(pid) / "comm").read_text().strip()
        except OSError:
            command = "?"
    return command[:120]


def describe_port_holder(port: int, proc: Path = Path("/proc")) -> str:
    """ "held by pid 1234 (nginx: master process)", or why it cannot be said."""
    try:
        inodes = listening_inodes(port, proc=proc)
        if not inodes:
            return "no listening process found (the address may not be local, or in use briefly)"
        owners = socket_owners(inodes, proc)
    except (OSError, ValueError):
        return "its holder could not be determined"
    if not owners:
        return "held by a process this user cannot see (run as root to name it)"
    return "held by " + ", ".join(f"pid {pid} ({command})" for pid, command in owners)
