"""Training progress on a terminal: a rich bar counting images, with the rate in images/s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eostream.trainer.task import BatchCallback


@contextlib.contextmanager
def progress_bar() -> Iterator[BatchCallback]:
    """A rich progress bar counting training images, with the rate in images/s."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f} images"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=None, rate="")

        def on_batch(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:,.0f} images/s" if speed else "")

        yield on_batch
