"""Read-ahead keeps order, reports each item's error, and never runs far ahead."""

from __future__ import annotations

import threading

import pytest

from pipelines.common.prefetch import prefetch


def test_order_errors_and_bounded_lookahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("bad item 3")
        return i * i

    seen = []
    for item, future in prefetch(work, range(10), depth=2):
        # the consumer holds item k: at most depth items beyond it have been started
        with lock:
            assert max(started) <= item + 2
        if item == 3:
            with pytest.raises(ValueError, match="bad item 3"):
                future.result()
        else:
            seen.append(future.result())
    assert seen == [i * i for i in range(10) if i != 3]
    with pytest.raises(ValueError):
        next(prefetch(work, [1], depth=0))


def test_unthreaded_prefetch_has_the_same_results() -> None:
    def work(i: int) -> int:
        if i == 1:
            raise KeyError(i)
        return -i

    out = list(prefetch(work, range(3), threaded=False))
    assert [item for item, _ in out] == [0, 1, 2]
    assert out[0][1].result() == 0 and out[2][1].result() == -2
    with pytest.raises(KeyError):
        out[1][1].result()
