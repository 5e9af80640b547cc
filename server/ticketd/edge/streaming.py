"""Writing a server stream's pages to its reader, each write bounded in time.

A servicer writes with `context.write` rather than as a generator, so that each write can be
bounded in time (a generator's yield gives the send to grpc, out of our reach). The wait for
the reader is what bounds a stream's memory: one page read from the outbox plus what HTTP/2
flow control lets through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol, TypeVar

from ticketd.errors import Reason, ResourceExhausted


class Sequenced(Protocol):
    """A streamed record: its position in the stream."""

    @property
    def sequence(self) -> int: ...


R = TypeVar("R", bound=Sequenced)


def every_record_resumes(record: Sequenced, delivered: int) -> int:
    """The default resume point: a reader that has a record resumes after it."""
    return record.sequence


async def write_pages(
    context: Any,
    pages: AsyncGenerator[list[R], None],
    to_proto: Callable[[R], Any],
    *,
    send_timeout: float,
    after_sequence: int,
    resume_point: Callable[[R, int], int] = every_record_resumes,
    batch: Callable[[list[R]], Any] | None = None,
) -> None:
    """Send every record of every page, in order; a reader that takes none for
    `send_timeout` seconds ends the stream with RESOURCE_EXHAUSTED STREAM_TOO_SLOW and the
    last resume point it was sent (metadata `resume_after_sequence`).

    `resume_point(record, delivered)` is where the reader resumes once `record` is sent
    (`delivered` when the record does not move it, e.g. a snapshot entry before the snapshot
    is whole). With `batch`, each page is one message, `batch(page)` (instead of
    `to_proto` per record), whose write is bounded the same way; the resume point moves only
    once the whole page is sent, since a reader resumes after the messages it has, never
    inside one."""
    delivered = after_sequence
    loop = asyncio.get_running_loop()
    try:
        async for page in pages:
            if not page:
                continue
            # One timer per page, moved on after each write, rather than wait_for per
            # record: wait_for makes a task per call, and with 50 watchers of a busy event
            # that was tens of thousands of tasks a second.
            try:
                async with asyncio.timeout(send_timeout) as limit:
                    if batch is not None:
                        await context.write(batch(page))
                        for record in page:
                            delivered = resume_point(record, delivered)
                    else:
                        for record in page:
                            limit.reschedule(loop.time() + send_timeout)
                            await context.write(to_proto(record))
                            delivered = resume_point(record, delivered)
            except TimeoutError:
                raise ResourceExhausted(
                    f"the reader took no change for {send_timeout:g} s; "
                    "reconnect with after_sequence",
                    reason=Reason.STREAM_TOO_SLOW,
                    metadata={"resume_after_sequence": str(delivered)},
                ) from None
    finally:
        await pages.aclose()
