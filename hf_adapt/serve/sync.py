"""Feedback from many servers: each replica syncs its own feedback file and its own answers file to one private
Hub dataset repo with ``huggingface_hub.CommitScheduler``, so replicas never write the same file and never
conflict. ``hf-adapt feedback --feedback org/name`` reads the repo (answers live under the hidden ``.answers/``,
which feedback readers skip). Feedback naming an answer another replica gave finds it in the repo: on a miss the
store pulls the other replicas' answer files (at most once per ``pull_every`` seconds).

A record is acknowledged once it is on the local disk (fsynced); the scheduler uploads the files every
``sync_minutes`` and once more when the server stops, and a server killed before that uploads them at its next
start, since its files keep their names.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hf_adapt.serve.answers import ANSWERS_DIR

logger = logging.getLogger("hf_adapt.serve")


class HubSync:
    def __init__(self, repo_id: str, folder: Path, files: list[Path], sync_minutes: float, pull_every: float = 10.0):
        from huggingface_hub import CommitScheduler

        self.repo_id, self.folder = repo_id, folder
        patterns = [path.relative_to(folder).as_posix() for path in files]
        self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder, every=sync_minutes,
                                         private=True, allow_patterns=patterns)
        self.pull_every = pull_every
        self._pulled_at = float("-inf")
        self._lock = threading.Lock()
        self.cache = folder / ANSWERS_DIR / ".replicas"

    def flush(self) -> None:
        """Upload what changed now (waits for it)."""
        self.scheduler.trigger().result()

    def stop(self) -> None:
        """Upload once more, then stop the schedule (a stopped scheduler uploads nothing)."""
        try:
            self.flush()
        except Exception as err:  # noqa: BLE001 - the local files keep everything; the next start uploads them
            logger.warning("feedback sync to %s failed at shutdown (the local files keep every record): %s",
                           self.repo_id, err)
        self.scheduler.stop()

    def pull_answers(self) -> list[Path]:
        """The other replicas' answers, downloaded into a local folder (at most once per ``pull_every`` seconds)."""
        with self._lock:
            if time.monotonic() - self._pulled_at >= self.pull_every:
                self._pulled_at = time.monotonic()
                from huggingface_hub import snapshot_download

                try:
                    snapshot_download(self.repo_id, repo_type="dataset", allow_patterns=[".answers/*.jsonl"],
                                      local_dir=self.cache)
                except Exception as err:  # noqa: BLE001 - the Hub unreachable: this lookup misses, the next retries
                    logger.warning("could not read other replicas' answers from %s: %s", self.repo_id, err)
        return [self.cache / ANSWERS_DIR]
