"""Buffered process output that any number of readers can read, and re-read, from a byte offset.

Modal's stdio reads are resumable: the SDK reopens a read stream at the byte offset it has reached
(after an error, or when it releases an idle connection, about every 30 s by default). So each
output stream of a process is kept whole for the life of its sandbox, and a read names where it
starts. Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

__all__ = ["OutputBuffer", "pump"]

#: Most bytes sent in one streamed message.
CHUNK = 256 * 1024


class OutputBuffer:
    """An append-only byte stream with an end; readers wait for bytes past their offset."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def closed(self) -> bool:
        """True once the stream has ended: no bytes will be appended any more."""
        return self._closed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def append(self, data: bytes) -> None:
        """Add bytes at the end (ignored once closed)."""
        if data and not self._closed:
            self._data += data
            self._notify()

    def close(self) -> None:
        """End the stream; waiting readers get what is left, then the end."""
        if not self._closed:
            self._closed = True
            self._notify()

    async def read(self, offset: int, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` bytes from ``offset``, waiting for them; ``b""`` means the stream has ended."""
        while True:
            if offset < len(self._data):
                return bytes(self._data[offset : offset + limit])
            if self._closed:
                return b""
            await self._changed.wait()

    async def chunks(self, offset: int) -> AsyncIterator[bytes]:
        """Every chunk from ``offset`` to the end of the stream."""
        while True:
            data = await self.read(offset)
            if not data:
                return
            offset += len(data)
            yield data

    def text_prefix(self, offset: int) -> tuple[str, int]:
        """The whole UTF-8 characters available from ``offset``, and the offset after them.

        A multi-byte character split by a read stays for the next call, unless the stream has
        ended (then undecodable bytes become U+FFFD).
        """
        data = bytes(self._data[offset:])
        if not self._closed:
            cut = len(data)
            for back in range(1, min(4, len(data)) + 1):
                byte = data[-back]
                if byte & 0xC0 != 0x80:  # the first byte of the last character
                    needed = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
                    if needed > back:
                        cut = len(data) - back
                    break
            data = data[:cut]
        return data.decode("utf-8", errors="replace"), offset + len(data)

    async def wait_for_more(self, offset: int, timeout: float | None) -> None:
        """Return when there are bytes past ``offset``, the stream ended, or ``timeout`` passed."""
        if offset < len(self._data) or self._closed:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


async def pump(reader: asyncio.StreamReader, buffer: OutputBuffer) -> None:
    """Copy ``reader`` into ``buffer`` until end of file, then close the buffer."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            buffer.append(data)
    finally:
        buffer.close()
