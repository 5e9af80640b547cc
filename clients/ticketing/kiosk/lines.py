"""Input lines from a barcode scanner (a keyboard on stdin), a pipe or a file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

# A ticket code is at most 128 characters; a line this long is junk, and it is cut here so
# that a runaway input (a file without newlines) cannot exhaust memory. The cut line is
# still sent, and the server refuses it as INVALID_ARGUMENT like any over-long code.
MAX_LINE_BYTES = 4096


class LineReader:
    """Reads lines from a file descriptor on a daemon thread and hands them to the loop.

    A thread rather than an asyncio pipe transport: those refuse regular files
    (`--input FILE`, `< codes.txt`). It reads the raw descriptor with os.read, not through
    `sys.stdin.buffer`: a daemon thread blocked inside a BufferedReader holds its lock, and
    the interpreter aborts at exit when it cannot take that lock to flush stdin. At most
    `buffered` lines are read ahead, so a huge input file is not slurped into memory.
    """

    def __init__(self, fd: int, *, max_bytes: int = MAX_LINE_BYTES, buffered: int = 64) -> None:
        self._fd = fd
        self._max = max_bytes
        self._room = threading.Semaphore(buffered)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="kiosk-input", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def _deliver(self, line: str | None) -> None:
        # RuntimeError: the loop is closed, so nobody is waiting for input any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)

    def _emit(self, raw: bytes) -> None:
        self._room.acquire()
        self._deliver(raw.decode("utf-8", errors="replace"))

    def _run(self) -> None:
        buf = bytearray()
        cutting = False  # inside an over-long line whose first MAX bytes were emitted
        try:
            while chunk := os.read(self._fd, 65536):
                buf += chunk
                while (newline := buf.find(b"\n")) >= 0:
                    line = bytes(buf[: newline + 1])
                    del buf[: newline + 1]
                    if cutting:
                        cutting = False  # the end of the cut line: drop it
                    else:
                        self._emit(line[: self._max])
                if len(buf) > self._max:
                    if not cutting:
                        self._emit(bytes(buf[: self._max]))
                        cutting = True
                    buf.clear()
            if buf and not cutting:
                self._emit(bytes(buf))  # a last line without a newline
        except OSError:
            pass  # a closed or broken input is the end of input
        finally:
            self._deliver(None)

    async def next_line(self) -> str | None:
        """The next line (with its newline, if it had one), or None at the end of input."""
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)  # every later call sees the end too
        else:
            self._room.release()
        return line
