"""Dynamic micro-batching: inputs of concurrent requests share one forward pass.

A request's inputs stay together (they are checked before they queue, and answered together). Batches run one
at a time on one thread, so the model is never called concurrently and the event loop keeps accepting requests
meanwhile. While a batch runs, new requests queue; the next batch takes all of them (up to ``max_batch_size``
inputs; a single request larger than that runs alone, in the model's own chunks), so batches grow with the
load and a lone request never waits for company. ``max_wait_ms`` is how long a batch of one waits for requests
that have arrived but are still being checked (:meth:`MicroBatcher.expect`); with none on the way it runs at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch  # told each batch's size (metrics)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-adapt-model")
        self.expected = 0  # requests that arrived and will submit once their inputs are checked

    def expect(self) -> None:
        """A request has arrived and will :meth:`submit` (or :meth:`withdraw`) soon: a batch may wait for it."""
        self.expected += 1

    def withdraw(self) -> None:
        self.expected -= 1

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results for ``items``, in order, once the batch holding them has run."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((items, future))
        return await future

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model's thread, between batches (e.g. an explanation)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._executor.shutdown(wait=True)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch_size:
                if self._queue.empty():
                    left = deadline - time.monotonic()
                    if self.expected == 0 or left <= 0:  # nothing on the way: run what there is now
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                else:
                    job = self._queue.get_nowait()
                if size + len(job[0]) > self.max_batch_size:
                    await self._run(loop, jobs, size)  # this batch is full: run it, and start the next with job
                    jobs, size, deadline = [job], len(job[0]), time.monotonic() + self.max_wait
                    continue
                jobs.append(job)
                size += len(job[0])
            await self._run(loop, jobs, size)

    async def _run(self, loop, jobs: list[tuple[list[Any], asyncio.Future]], size: int) -> None:
        items = [item for job_items, _ in jobs for item in job_items]
        if self.on_batch is not None:
            self.on_batch(size)
        try:
            results = await loop.run_in_executor(self._executor, self.run, items)
        except Exception as err:  # noqa: BLE001 - every request of the batch gets the error
            for _, future in jobs:
                if not future.done():
                    future.set_exception(err)
            return
        start = 0
        for job_items, future in jobs:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(results[start:start + len(job_items)])
            start += len(job_items)
