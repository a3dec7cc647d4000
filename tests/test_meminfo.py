"""The /proc/meminfo parser (pure) and reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from fractal_hostd.process.meminfo import MemInfo, parse_meminfo, read_meminfo

SAMPLE = """MemTotal:       24684084 kB
MemFree:        24098932 kB
MemAvailable:   24295488 kB
Buffers:           12345 kB
HugePages_Total:       0
"""


def test_parses_the_three_fields() -> None:
    assert parse_meminfo(SAMPLE) == MemInfo(
        total_kb=24684084, free_kb=24098932, available_kb=24295488
    )


def test_missing_field_is_named() -> None:
    text = SAMPLE.replace("MemAvailable:   24295488 kB\n", "")
    with pytest.raises(ValueError, match="lacks MemAvailable"):
        parse_meminfo(text)


@pytest.mark.parametrize("line", ["MemFree:", "MemFree: lots kB", "MemFree: 12 MB"])
def test_malformed_value_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="unexpected"):
        parse_meminfo(SAMPLE.replace("MemFree:        24098932 kB", line))


def test_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text(SAMPLE)
    assert read_meminfo(path).total_kb == 24684084


def test_reads_this_machine() -> None:
    info = read_meminfo()
    assert info.total_kb >= info.available_kb > 0
    assert info.total_kb >= info.free_kb > 0
