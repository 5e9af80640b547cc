"""Live progress on the terminal while a rush runs: rate, errors and p99 so far.

A rich progress bar on stderr when it is a terminal; nothing at all otherwise (or with
--quiet), so logs and pipes stay clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

from ticketing.rush.load import LoadPlan, RunClock
from ticketing.rush.stats import Recorder

REFRESH_S = 0.25


def _line(recorder: Recorder, clock: RunClock, last_second: int) -> str:
    bucket = recorder.seconds.get(last_second)
    rate = bucket.requests if bucket else 0
    errors = recorder.all_errors
    phase = "warm-up " if clock.elapsed() < recorder.warmup_s else ""
    return (
        f"{phase}{rate:>6} req/s  done {recorder.all_requests:>7}  errors {errors:>6}  "
        f"p99 {recorder.p99_ms():8.1f} ms  in flight {clock.inflight:>5}"
    )


@contextlib.asynccontextmanager
async def live_progress(
    plan: LoadPlan, recorder: Recorder, clock: RunClock, title: str, *, enabled: bool
) -> AsyncIterator[None]:
    """Show a progress bar for the duration of the block (if enabled and stderr is a TTY).
    The bar tracks `--duration` (or `--requests` when there is no duration)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    by_time = plan.duration_s is not None
    total = plan.duration_s if by_time else float(plan.requests or 0)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task(title, total=total or None, stats="")

    async def refresh() -> None:
        while not clock.done:
            done = clock.elapsed() if by_time else float(clock.sent)
            second = max(0, int(clock.elapsed()) - 1)
            progress.update(
                task, completed=min(done, total or done), stats=_line(recorder, clock, second)
            )
            await asyncio.sleep(REFRESH_S)

    with progress:
        ticker = asyncio.create_task(refresh())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            second = max(0, int(clock.elapsed()) - 1)
            progress.update(task, completed=total or None, stats=_line(recorder, clock, second))
