"""Pure pieces of cloud storage: config rendering (checked against the real rclone parser),
mountinfo parsing, error scrubbing, prerequisite checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fractal_hostd.cloud_storage.check import check_allow_other, check_prerequisites
from fractal_hostd.cloud_storage.mountinfo import (
    MountEntry,
    is_mounted,
    mounts_under,
    parse_mountinfo,
)
from fractal_hostd.cloud_storage.rclone_config import (
    Backend,
    InvalidSetting,
    OAuthToken,
    normalize_expiry,
    render_config,
    scrub,
    token_json,
)
from tests.cloud_storage_fixtures import CLIENT_ID, CLIENT_SECRET, TOKEN, FakeTools

RCLONE = shutil.which("rclone")
needs_rclone = pytest.mark.skipif(RCLONE is None, reason="rclone is not installed")

# Values that an unescaped INI writer would break: quotes, backticks, comment and key
# characters, leading/trailing spaces, interpolation look-alikes inside the token JSON.
NASTY = [
    'with "double" quotes',
    "with `backticks` and a trailing `",
    " # ; = [section] : ",
    '"""triple"""',
    "percent %(type)s in a token",
    "unicode é ☃",
    "",
]


def dump(config_text: str, tmp_path: Path) -> dict[str, dict[str, str]]:
    """What the real rclone reads from our file (`rclone config dump`, no network)."""
    path = tmp_path / "dump.conf"
    path.write_text(config_text)
    assert RCLONE is not None
    result = subprocess.run(
        [RCLONE, "config", "dump", "--config", str(path)],
        capture_output=True,
        check=True,
        timeout=20,
    )
    parsed: dict[str, dict[str, str]] = json.loads(result.stdout)
    return parsed


@needs_rclone
def test_rclone_reads_back_exactly_what_we_wrote(tmp_path: Path) -> None:
    tokens = [OAuthToken(value, value[::-1], "", "Bearer") for value in NASTY]
    sections = []
    for number, token in enumerate(tokens):
        client_id = NASTY[number].replace("%(", "%")  # plain values refuse "%(" instead
        sections.append(render_config(f"r{number}", Backend("drive"), token, client_id, "s`x"))
    remotes = dump("".join(sections), tmp_path)

    for number, token in enumerate(tokens):
        remote = remotes[f"r{number}"]
        assert json.loads(remote["token"]) == {
            "access_token": token.access_token,
            "token_type": "Bearer",
            "refresh_token": token.refresh_token,
        }
        if NASTY[number]:
            assert remote["client_id"] == NASTY[number].replace("%(", "%")
        assert remote["client_secret"] == "s`x"
        assert remote["type"] == "drive"


printable = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f")
)


@given(access=printable, refresh=printable)
def test_token_json_round_trips_any_printable_text(access: str, refresh: str) -> None:
    text = token_json(OAuthToken(access, refresh, "2030-01-01T00:00:00Z", "Bearer"))
    assert "%(" not in text
    assert "\n" not in text
    parsed = json.loads(text)
    assert (parsed["access_token"], parsed["refresh_token"]) == (access, refresh)


def test_config_lists_client_credentials_before_the_token() -> None:
    text = render_config("google_drive-1", Backend("drive"), TOKEN, CLIENT_ID, CLIENT_SECRET)
    keys = [line.split(" = ")[0] for line in text.splitlines()]
    assert keys == ["[google_drive-1]", "type", "client_id", "client_secret", "token"]


@pytest.mark.parametrize(
    ("given_expiry", "expected"),
    [
        ("2021-01-20T18:30:00Z", "2021-01-20T18:30:00+00:00"),
        ("2021-01-20T18:30:00.123456-05:00", "2021-01-20T18:30:00.123456-05:00"),
        ("2021-01-20 18:30:00", "2021-01-20T18:30:00+00:00"),
        ("", ""),
    ],
)
def test_expiry_becomes_rfc3339(given_expiry: str, expected: str) -> None:
    assert normalize_expiry(given_expiry) == expected


def test_bad_expiry_names_the_field() -> None:
    with pytest.raises(InvalidSetting) as failure:
        normalize_expiry("next tuesday")
    assert failure.value.field_name == "expiry"


def test_scrub_removes_secrets_in_plain_and_json_form_and_keeps_one_line() -> None:
    secret = 'se"cret'
    text = f"2026/01/01 10:00:00 Failed: {secret} and {json.dumps(secret)[1:-1]}\nsecond line"
    assert scrub(text, [secret]) == "Failed: [redacted] and [redacted]; second line"
    assert len(scrub("x" * 5000, [])) == 1000


MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "43 27 0:39 / /fractal/cloudStorage/32768/Google\\040Drive rw,nosuid,nodev,relatime "
    "- fuse.rclone google_drive-32768: rw,user_id=0,group_id=0,default_permissions,allow_other\n"
    "44 27 0:40 / /fractal/cloudStorage/32768 rw master:3 shared:7 - tmpfs tmpfs rw\n"
    "45 27 0:41 / /weird\\134path\\011tab rw - fuse.rclone x: rw\n"
    "garbage line\n"
)


def test_mountinfo_parsing_undoes_escapes_and_skips_garbage() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[1] == MountEntry(
        Path("/fractal/cloudStorage/32768/Google Drive"), "fuse.rclone", "google_drive-32768:"
    )
    assert entries[2].fs_type == "tmpfs"  # optional fields before "-" skipped
    assert entries[3].mount_point == Path("/weird\\path\ttab")
    assert len(entries) == 4


def test_mounts_under_lists_deepest_first_and_excludes_the_directory_itself() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    under = mounts_under(entries, Path("/fractal/cloudStorage"))
    assert [e.mount_point.name for e in under] == ["Google Drive", "32768"]
    assert mounts_under(entries, Path("/fractal/cloudStorage/32768"))[0].fs_type == "fuse.rclone"
    drive = Path("/fractal/cloudStorage/32768/Google Drive")
    assert is_mounted(entries, drive, "fuse.rclone")
    assert not is_mounted(entries, drive, "ext4")


def test_prerequisites_report_the_rclone_version(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "tools")
    device = tmp_path / "fuse"
    device.write_bytes(b"")
    results = check_prerequisites(
        rclone=tools.path("rclone"),
        fusermount=[tools.path("fusermount3")],
        fuse_device=device,
        euid=0,
    )
    assert results == [
        ("rclone", True, f"rclone v1.60.1-fake at {tools.path('rclone')}"),
        ("fusermount", True, tools.path("fusermount3")),
        ("/dev/fuse", True, f"{device} opens read-write"),
        ("allow_other", True, "running as root: user_allow_other is not needed"),
    ]


def test_prerequisites_say_what_is_missing(tmp_path: Path) -> None:
    results = check_prerequisites(
        rclone=str(tmp_path / "no-rclone"),
        fusermount=[str(tmp_path / "no-fusermount")],
        fuse_device=tmp_path / "no-fuse",
        euid=1000,
        fuse_conf=tmp_path / "no-fuse.conf",
    )
    assert [(name, ok) for name, ok, _ in results] == [
        ("rclone", False),
        ("fusermount", False),
        ("/dev/fuse", False),
        ("allow_other", False),
    ]
    assert "apt-get install rclone" in results[0][2]


def test_allow_other_for_a_non_root_user_needs_fuse_conf(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text("# mount_max = 1000\nuser_allow_other\n")
    assert check_allow_other(1000, conf)[1] is True
    conf.write_text("#user_allow_other\n")
    assert check_allow_other(1000, conf)[1] is False
