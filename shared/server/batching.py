"""Micro-batching inside a runtime, after each request has been validated on its own.

Why not MLServer's adaptive batcher: it merges raw requests before the model sees them, so one bad request fails
every request batched with it, and requests with different input kinds are merged by name alone. Here each request
is decoded and checked first (a bad one gets its own 4xx), then the model input arrays are concatenated.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Tuple

import numpy as np


class MicroBatcher:
    """Concatenates concurrent requests into batches of up to `max_images`, waiting at most `max_wait_s`.

    `predict` runs in a thread pool of `concurrency` threads, so at most that many batches run at once; the
    predict function must be safe to call from that many threads (TF is; the TFLite classifier pools interpreters).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_images: int = 16,
                 max_wait_s: float = 0.005, concurrency: int = 1, on_batch: Callable[[int], None] = None):
        self._predict = predict
        self._max_images = max(1, int(max_images))
        self._max_wait_s = max(0.0, float(max_wait_s))
        self._executor = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="predict")
        self._slots = asyncio.Semaphore(max(1, int(concurrency)))
        self._on_batch = on_batch
        self._queue: asyncio.Queue = asyncio.Queue()
        self._carry = None
        self._task = None
        self._running = set()  # the loop keeps only weak references to tasks: hold running batches here

    async def predict(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim < 1:  # checked here: a bad item in the queue would stall a batch
            raise TypeError(f"MicroBatcher.predict takes a batch array, got {type(x).__name__}")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._collect())
        return await future

    async def _next(self, timeout: float):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout <= 0:
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _collect(self):
        loop = asyncio.get_running_loop()
        while self._carry is not None or not self._queue.empty():
            await self._slots.acquire()  # wait for a free slot first: requests pile up meanwhile
            first = await self._next(0)
            batch: List[Tuple[np.ndarray, asyncio.Future]] = [first]
            count = len(first[0])
            deadline = loop.time() + self._max_wait_s
            while count < self._max_images:
                try:
                    item = await self._next(deadline - loop.time())
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if count + len(item[0]) > self._max_images:
                    self._carry = item  # first in the next batch, order kept
                    break
                batch.append(item)
                count += len(item[0])
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch):
        try:
            inputs = np.concatenate([x for x, _ in batch]) if len(batch) > 1 else batch[0][0]
            if self._on_batch:
                self._on_batch(len(inputs))
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, inputs)
            start = 0
            for x, future in batch:
                if not future.done():
                    future.set_result(outputs[start:start + len(x)])
                start += len(x)
        except Exception as exc:  # the model failed on valid input: every caller in the batch hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._slots.release()

    def close(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
