"""Roll-out: follow the served output (a local folder, or a Hub repo's branch or tag), load a new version beside
the one serving, and swap it in; roll back on request.

A version is taken only if it passed the release gate its run was given (forgetting, win rate, operating point:
:func:`hf_adapt.hub.check_release_gate`), loads, and is the same kind of model (the routes stay the same). The
swap is one assignment: a request holds the version it started with to the end, so no request fails or is
dropped, and every answer names the revision that produced it. A refused version is remembered (and counted)
and the old one keeps serving; a later, different version is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from hf_adapt.serve.models import Served, load_served, source_revision

logger = logging.getLogger("hf_adapt.serve")


def _stamp(directory: Path) -> tuple[Any, ...]:
    """What changes whenever a new output is put in place (a recipe swaps whole folders): cheap to look at."""
    try:
        folder = os.stat(directory)
        record = os.stat(directory / "hf_adapt.json")
    except OSError:
        return ()
    return folder.st_ino, folder.st_mtime_ns, record.st_ino, record.st_mtime_ns, record.st_size


class Rollout:
    def __init__(self, server, interval: float):
        self.server, self.interval = server, interval
        self.previous: Served | None = None
        self.refused: dict[str, str] = {}  # revision -> why
        self._stamp: tuple[Any, ...] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ following the source

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a bad poll (Hub down, folder mid-copy) never stops serving
                logger.warning("watch: could not check %s for a new version: %s", self.server.config.model, err)

    async def check(self) -> str | None:
        """Look for a new version once; returns the revision now serving if it changed."""
        revision = await asyncio.to_thread(self._latest)
        if revision is None or revision == self.server.served.revision or revision in self.refused:
            return None
        return await self.swap_to(revision)

    def _latest(self) -> str | None:
        cfg = self.server.config
        local = Path(cfg.model).expanduser()
        if local.is_dir():
            stamp = _stamp(local)
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            return source_revision(local)
        from huggingface_hub import HfApi

        return HfApi().model_info(cfg.model, revision=cfg.revision).sha

    async def swap_to(self, revision: str) -> str | None:
        async with self._lock:
            cfg = self.server.config
            try:
                candidate = await asyncio.to_thread(self._load, revision)
            except Exception as err:  # noqa: BLE001 - whatever keeps a version from serving refuses it
                self.refused[revision] = str(err)
                self.server.metrics.refused.inc()
                logger.warning("watch: version %s of %s refused, %s keeps serving: %s", revision, cfg.model,
                               self.server.served.revision, err)
                return None
            self.install(candidate)
            return candidate.revision

    def _load(self, revision: str) -> Served:
        from hf_adapt.errors import ModelError
        from hf_adapt.hub import check_release_gate
        from hf_adapt.predict import local_dir

        cfg = self.server.config
        local = Path(cfg.model).expanduser().is_dir()
        directory = local_dir(cfg.model, None if local else revision)
        check_release_gate(directory)
        served = load_served(str(directory), None, cfg.trust_remote_code, cfg.device)
        if local and served.revision != revision:
            raise ModelError(f"the folder changed again while version {revision} was loading; the next look takes it")
        if served.kind != self.server.served.kind:
            raise ModelError(f"the new version is a {served.kind}, the server serves a {self.server.served.kind}")
        served.name = self.server.served.name
        return served

    def install(self, served: Served) -> None:
        old = self.server.served
        if served.kind == "classifier":
            served.model.batch_size = self.server.config.max_batch_size
        self.server.served = served  # the swap: requests already running keep the version they hold
        self.previous = old
        self.server.metrics.set_model(served.name, served.revision, old.revision)
        logger.info("now serving %s revision %s (was %s)", served.name, served.revision, old.revision)

    def rollback(self) -> Served:
        """Back to the version served before the last swap; the version left is not taken again by the watcher."""
        from hf_adapt.errors import ConfigError

        if self.previous is None:
            raise ConfigError("there is no previous version to roll back to")
        left = self.server.served
        self.refused[left.revision] = "rolled back"
        self.install(self.previous)
        return left
