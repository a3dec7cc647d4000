"""Log levels for journald: `<N>` syslog prefixes when stderr is the journal, plain otherwise.

systemd tells a service its stderr is a journal stream with JOURNAL_STREAM=<dev>:<inode>
(systemd.exec(5)); journald then reads a leading `<N>` on each line as that line's priority
(SyslogLevelPrefix=yes, the default). The systemd stage (tests/test_systemd_deb.py) shows the
end result with `journalctl -p err`; these tests pin the formatting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fractal_hostd.process import logs
from tests.logging_fixtures import restore_logging

__all__ = ["restore_logging"]  # autouse fixture


@pytest.fixture
def stderr_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real file with a device and an inode, like journald's socket; `use_as_stderr` below."""
    path = tmp_path / "stderr"
    with path.open("w", encoding="utf-8") as stream:
        monkeypatch.setattr(sys, "_test_stderr_file", stream, raising=False)
        yield path


def use_as_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # In the test body: pytest's own capture sets sys.stderr again between fixtures and the test.
    monkeypatch.setattr(sys, "stderr", sys._test_stderr_file)  # type: ignore[attr-defined]


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def logging_with_journal_stream(
    monkeypatch: pytest.MonkeyPatch, journal_stream: str, fmt: logs.LogFormat, level: str
) -> None:
    """The service's logging set up with JOURNAL_STREAM=`journal_stream`, its stderr the
    `stderr_file`."""
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    use_as_stderr(monkeypatch)
    logs.setup_logging(fmt=fmt, level=level)


def lines_of(stderr_file: Path) -> list[str]:
    """What reached the stderr file so far."""
    sys.stderr.flush()
    return stderr_file.read_text().splitlines()


def log_one_of_each() -> None:
    log = logging.getLogger("fractal_hostd.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")


def test_json_lines_carry_the_syslog_level_when_stderr_is_the_journal(
    stderr_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging_with_journal_stream(monkeypatch, journal_stream_of(stderr_file), "json", "debug")
    log_one_of_each()
    lines = lines_of(stderr_file)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    # After the prefix, still one JSON object per line (journald strips the prefix).
    assert [json.loads(line[3:])["msg"] for line in lines] == ["d", "i", "w", "e", "c"]


def test_every_line_of_a_multi_line_record_is_prefixed(
    stderr_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging_with_journal_stream(monkeypatch, journal_stream_of(stderr_file), "console", "info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed", extra={logs.NO_SENTRY_EVENT: True})
    lines = lines_of(stderr_file)
    assert len(lines) > 3  # the message and the traceback
    assert all(line.startswith("<3>") for line in lines), lines


def test_no_prefix_when_stderr_is_not_the_journal_stream(
    stderr_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child of a journald-logged process inherits JOURNAL_STREAM with its stderr redirected
    # elsewhere: the variable alone must not switch the prefix on.
    other = tmp_path / "other"
    other.touch()
    logging_with_journal_stream(monkeypatch, journal_stream_of(other), "json", "info")
    logging.getLogger("t").error("e")
    (line,) = lines_of(stderr_file)
    assert json.loads(line)["level"] == "error"


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "a:b"])
def test_no_prefix_without_a_valid_journal_stream(
    stderr_file: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    logging_with_journal_stream(monkeypatch, value, "json", "info")
    logging.getLogger("t").warning("w")
    (line,) = lines_of(stderr_file)
    assert json.loads(line)["level"] == "warning"


def test_no_prefix_when_stderr_has_no_file_descriptor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    logs.setup_logging(fmt="json", level="info")  # capsys's stderr has no fileno()
    logging.getLogger("t").info("i")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["msg"] == "i"


def test_a_configuration_error_reaches_the_journal_as_an_error(
    stderr_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Printed before logging is set up: it needs the prefix too, or `journalctl -p err` misses
    # the one line that says why the service does not start.
    from fractal_hostd import cli
    from fractal_hostd.config import EXIT_CONFIG_ERROR

    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stderr_file))
    monkeypatch.setenv("APP_ENV", "localdev")
    monkeypatch.setenv("FRACTAL_HEARTBEAT_INTERVAL", "banana")
    use_as_stderr(monkeypatch)
    assert cli.main(["check"]) == EXIT_CONFIG_ERROR
    (line,) = lines_of(stderr_file)
    assert line.startswith("<3>fractal-hostd: configuration error: ")
    assert "FRACTAL_HEARTBEAT_INTERVAL" in line
