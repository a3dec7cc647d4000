"""Links planted under $FRACTAL_ROOT/cloudStorage: never followed by mount, unmount or removal.

Containers write into cloudStorage/<host_port>/ (it is bind-mounted into them), so a link can
sit at cloudStorage/, cloudStorage/<port>/ or the provider folder. The service runs as root:
following one would mount a Drive, unmount a mount or remove a directory elsewhere. Same fakes
and rules as tests/test_cloud_storage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fractal_hostd.cloud_storage.mounts import CloudStorage, MountFailed
from tests.cloud_storage_fixtures import (
    LIMIT,
    PORT,
    FakeTools,
    mount,
    root,
    tools,
)

__all__ = ["root", "tools"]  # fixtures


# Where the link is planted (below the root), and what its target holds so that following
# it would find the rest of the path there.
PLANTS = {
    "cloudStorage": ("cloudStorage", f"{PORT}/Google Drive"),
    "port dir": (f"cloudStorage/{PORT}", "Google Drive"),
    "provider folder": (f"cloudStorage/{PORT}/Google Drive", ""),
}


def tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def storage(tools: FakeTools, root: Path, tmp_path: Path) -> CloudStorage:
    return tools.storage(root, tmp_path / "private" / "rclone")


@pytest.fixture(params=list(PLANTS), ids=list(PLANTS))
def target(request: pytest.FixtureRequest, root: Path, tmp_path: Path) -> Path:
    """The link's target: a directory outside the root with a sentinel file."""
    link_at, inside = PLANTS[request.param]
    target = tmp_path / "elsewhere"
    (target / inside).mkdir(parents=True, exist_ok=True)
    (target / "sentinel").write_text("not yours")
    link = root / link_at
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return target


async def test_no_mount_through_a_planted_link(
    storage: CloudStorage, tools: FakeTools, target: Path
) -> None:
    before, mounted_before = tree(target), tools.mounted()

    with pytest.raises(MountFailed, match="is a symbolic link or not a directory"):
        await mount(storage, client_id=None, client_secret=None)

    assert tools.calls("rclone") == []
    assert tools.mounted() == mounted_before
    assert tree(target) == before


async def test_no_unmount_or_removal_through_a_planted_link(
    storage: CloudStorage, tools: FakeTools, root: Path, target: Path
) -> None:
    # mountinfo lists a mount at the path as the service would name it: the unmount tool,
    # given that path, would resolve the link and unmount whatever is at its target.
    tools.add_mount(root / "cloudStorage" / str(PORT) / "Google Drive")
    before = tree(target)

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)
        await storage.remove_leftovers()

    assert [call["role"] for call in tools.calls()] == []
    assert tree(target) == before


async def test_a_file_in_place_of_the_port_dir_is_refused(
    storage: CloudStorage, tools: FakeTools, root: Path
) -> None:
    (root / "cloudStorage").mkdir(parents=True)
    (root / "cloudStorage" / str(PORT)).write_text("a file")

    with pytest.raises(MountFailed, match="is a symbolic link or not a directory"):
        await mount(storage, client_id=None, client_secret=None)
    assert tools.calls("rclone") == []
    assert (root / "cloudStorage" / str(PORT)).read_text() == "a file"
