"""Dynamic micro-batching: inputs of concurrent requests share one forward pass.

A request's inputs stay together (they are checked before they queue, and answered together). The first
request of a batch waits at most ``max_wait_ms`` for others; a batch closes at ``max_batch_size`` inputs (a
single request larger than that runs alone, in the model's own chunks). Batches run one at a time on one
thread, so the model is never called concurrently and the event loop keeps accepting requests meanwhile.
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

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results for ``items``, in order, once the batch holding them has run."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((items, future))
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
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
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
