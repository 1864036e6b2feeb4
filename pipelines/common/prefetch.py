"""Read ahead in a background thread, with a bounded number of items in flight.

Decoding DICOM and windowing (numpy, zlib/JPEG decoders: they release the
GIL) overlap with the model's forward pass, which matters most on a GPU,
where reading would otherwise leave the device idle. At most ``depth``
results are held, so memory stays bounded however long the series.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(
    fn: Callable[[T], R], items: Iterable[T], *, depth: int = 8
) -> Iterator[tuple[T, Future[R]]]:
    """Yield ``(item, future of fn(item))`` in order, computing up to ``depth`` ahead.

    The caller takes each result with ``future.result()``, which re-raises
    what ``fn`` raised for that item (so one bad file does not stop the rest).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        window: deque[tuple[T, Future[R]]] = deque()
        for item in source:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= depth:
                yield window.popleft()
        while window:
            yield window.popleft()
