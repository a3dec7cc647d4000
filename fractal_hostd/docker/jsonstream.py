"""Incremental decoder for Docker's streamed JSON (one object after another, `/events`).

dockerd writes each event as a JSON object followed by a newline, but HTTP chunking (and the
kernel) may cut the byte stream anywhere: inside an object, inside a multi-byte UTF-8
character, between an object and its newline. This decoder is fed raw chunks and hands back
the complete objects seen so far, keeping the unfinished tail for the next chunk.

It does not rely on the newline: objects are found with `json.JSONDecoder.raw_decode`, so
objects written back to back without a separator also decode. A line that is not valid JSON
even though its newline has arrived is skipped (and counted), so one corrupt line cannot wedge
the stream; an unfinished tail over `MAX_PENDING` is dropped, so garbage cannot grow memory.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

_WHITESPACE = " \t\r\n"
MAX_PENDING = 1 << 20  # characters kept waiting for an object's end (events are ~0.5 KiB)


class JsonStreamDecoder:
    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder = json.JSONDecoder()
        self._buffer = ""
        self.skipped = 0  # lines dropped as malformed (or not JSON objects)

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """Add a chunk; return every object completed by it, in stream order."""
        self._buffer += self._utf8.decode(chunk)
        objects: list[dict[str, Any]] = []
        pos = 0
        buffer = self._buffer
        while True:
            while pos < len(buffer) and buffer[pos] in _WHITESPACE:
                pos += 1
            if pos == len(buffer):
                break
            try:
                value, end = self._decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                newline = buffer.find("\n", pos)
                if newline == -1:
                    if len(buffer) - pos > MAX_PENDING:
                        self.skipped += 1  # no event is this large: garbage, drop it
                        pos = len(buffer)
                    break  # most likely an object cut by a chunk boundary: wait for more
                self.skipped += 1
                pos = newline + 1
                continue
            if isinstance(value, dict):
                objects.append(value)
            else:
                self.skipped += 1
            pos = end
        self._buffer = buffer[pos:]
        return objects

    @property
    def pending(self) -> str:
        """Undecoded text kept for the next chunk (empty at a clean object boundary)."""
        return self._buffer
