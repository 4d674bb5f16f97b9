"""MicroBatcher in-process: batches form from concurrent requests, order and sizes are kept, failures reach
every caller of the failed batch and no other, and at most `concurrency` batches run at once."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cassava.shared.server.batching import MicroBatcher


def _rows(first: int, count: int) -> np.ndarray:
    return np.arange(first, first + count, dtype=np.float32).reshape(count, 1)


def _double(x: np.ndarray) -> np.ndarray:
    return x * 2


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows():
    sizes = []
    # No waiting needed: gather queues all six before the collector first runs, so no clock decides the batches.
    batcher = MicroBatcher(_double, max_images=8, max_wait_s=0, on_batch=sizes.append)

    async def main():
        return await asyncio.gather(*(batcher.predict(_rows(10 * i, 2)) for i in range(6)))

    answers = asyncio.run(main())
    batcher.close()
    for i, answer in enumerate(answers):
        assert answer.tolist() == (_rows(10 * i, 2) * 2).tolist()
    assert sizes == [8, 4]  # four requests fill the first batch to max_images, the other two make the next


def test_a_request_that_does_not_fit_starts_the_next_batch_in_order():
    seen = []

    def record(x):
        seen.append(x[:, 0].tolist())
        return x

    batcher = MicroBatcher(record, max_images=4, max_wait_s=0.05)

    async def main():
        return await asyncio.gather(batcher.predict(_rows(0, 3)), batcher.predict(_rows(3, 3)),
                                    batcher.predict(_rows(6, 1)))

    answers = asyncio.run(main())
    batcher.close()
    assert [a[:, 0].tolist() for a in answers] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(len(batch) <= 4 for batch in seen)
    assert [value for batch in seen for value in batch] == list(range(7))  # carried over, order kept


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_serving():
    def fail_on_negative(x):
        if (x < 0).any():
            raise ValueError("model failed")
        return x

    batcher = MicroBatcher(fail_on_negative, max_images=1, max_wait_s=0.0)

    async def main():
        return await asyncio.gather(batcher.predict(-np.ones((1, 1), np.float32)), batcher.predict(_rows(5, 1)),
                                    return_exceptions=True)

    bad, good = asyncio.run(main())
    batcher.close()
    assert isinstance(bad, ValueError) and str(bad) == "model failed"
    assert good.tolist() == [[5.0]]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_no_more_batches_run_at_once_than_concurrency(concurrency):
    running, peak, lock = [0], [0], threading.Lock()

    def slow(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return x

    batcher = MicroBatcher(slow, max_images=1, max_wait_s=0.0, concurrency=concurrency)

    async def main():
        return await asyncio.gather(*(batcher.predict(_rows(i, 1)) for i in range(8)))

    answers = asyncio.run(main())
    batcher.close()
    assert [a[0, 0] for a in answers] == list(range(8))
    assert peak[0] == concurrency
