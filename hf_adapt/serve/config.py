"""``ServeConfig``: what ``hf-adapt serve`` serves, where, and within which limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from hf_adapt.config import Options
from hf_adapt.errors import ConfigError

API_KEY_ENV = "HF_ADAPT_API_KEY"


@dataclass
class ServeConfig(Options):
    """Serve an hf-adapt output (a classifier, or a language model from the feedback or pretrain recipe) over HTTP:
    predictions or OpenAI-compatible completions, feedback keyed by answer id, health, readiness and metrics."""

    title = "serve"
    model: str | None = field(default=None, metadata={"help": "The output to serve: an output folder, or a Hub repo id with an optional @revision (also the first positional argument)."})
    revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit (or give it as model@revision)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the base model's repo to run (off by default; a served folder cannot turn it on)."})
    ui: bool = field(default=False, metadata={"help": "Mount the reviewer page at /ui (gradio, in the serve extra): predict, explain, thumbs and corrections; a chat with thumbs for language models. Off by default: one more surface to expose, and gradio's background work costs about a tenth of the throughput on 2 cores."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; anything but a loopback address needs an API key (HF_ADAPT_API_KEY) or --allow_no_key."})
    port: int = field(default=8000, metadata={"help": "Port to bind (0: a free one, printed at start)."})
    workers: int = field(default=1, metadata={"help": "uvicorn worker processes, each with its own copy of the model, sharing one feedback log and answer store."})
    allow_no_key: bool = field(default=False, metadata={"help": "Serve on a non-loopback host without an API key (every route open to the network)."})
    watch: bool = field(default=False, metadata={"help": "Follow the served output (a folder, or the Hub repo's revision branch or tag) and swap in each new version that passed its release gate and loads; a refused one leaves the old one serving."})
    watch_interval: float = field(default=10.0, metadata={"help": "Seconds between looks for a new version when watching."})
    feedback_log: str = field(default="feedback/served.jsonl", metadata={"help": "The FeedbackLog (.jsonl) feedback is appended to; what was answered goes beside it (.answers/<name>.jsonl), so feedback by id works on every worker and after a restart."})
    feedback_repo: str | None = field(default=None, metadata={"help": "A private Hub dataset repo (org/name) each replica syncs its own feedback and answers files to (named <log>-<replica>.jsonl), with huggingface_hub's CommitScheduler; hf-adapt feedback --feedback org/name reads it."})
    replica: str | None = field(default=None, metadata={"help": "This server's name in the synced file names (default: the host name); keep it stable across restarts."})
    sync_minutes: float = field(default=1.0, metadata={"help": "With feedback_repo: upload the new records this often (and once more at shutdown)."})
    record_inputs: bool = field(default=True, metadata={"help": "Keep each input with its answer; false (privacy): only ids and outputs are kept, and feedback must carry the input."})
    user_salt_env: str = field(default="HF_ADAPT_FEEDBACK_SALT", metadata={"help": "Environment variable holding the secret key that user ids are hashed with (unset: plain SHA-256)."})
    max_batch_size: int = field(default=32, metadata={"help": "Classifiers: at most this many inputs, from concurrent requests, in one forward pass."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "Classifiers: how long the first input of a batch waits for others to join it."})
    max_inputs: int = field(default=256, metadata={"help": "At most this many inputs in one request (413 beyond)."})
    max_body_bytes: int = field(default=16 * 2**20, metadata={"help": "At most this many bytes in one request body (413 beyond)."})
    max_image_pixels: int = field(default=40_000_000, metadata={"help": "Images: at most this many pixels (width x height) in an upload; larger ones, decompression bombs included, get 413."})
    rate_limit: float = field(default=0.0, metadata={"help": "Requests per second one client (by address) may make, with bursts of 2 seconds' worth; 0: no limit. Over it: 429 with Retry-After."})
    max_new_tokens: int = field(default=256, metadata={"help": "Language models: the most tokens one answer may have (a request may ask for fewer)."})
    device: str = field(default="cpu", metadata={"help": "Where the model runs: cpu, cuda, cuda:1, mps."})
    torch_num_threads: int | None = field(default=None, metadata={"help": "CPU threads for the model (unset: torch's default)."})

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: nothing to serve; give an output folder or a Hub repo id, e.g. "
                              "hf-adapt serve outputs/quickstart")
        if "@" in self.model and not self.model.startswith(("/", ".", "~")):
            name, _, revision = self.model.rpartition("@")
            if self.revision and self.revision != revision:
                raise ConfigError(f"model {self.model!r} names revision {revision!r} but --revision is "
                                  f"{self.revision!r}; give one")
            self.model, self.revision = name, revision
        if not self.feedback_log.endswith(".jsonl"):
            raise ConfigError(f"feedback_log {self.feedback_log!r} must end in .jsonl (a FeedbackLog)")
        for name in ("workers", "max_batch_size", "max_inputs", "max_body_bytes", "max_image_pixels", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.rate_limit < 0:
            raise ConfigError("max_wait_ms and rate_limit must be >= 0")
        if self.sync_minutes <= 0:
            raise ConfigError(f"sync_minutes must be > 0, got {self.sync_minutes}")
        if self.replica is not None and not self.replica.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"replica {self.replica!r}: use letters, digits, '-', '_' and '.' only (it names files)")
        if self.watch_interval <= 0:
            raise ConfigError(f"watch_interval must be > 0, got {self.watch_interval}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")

    def check_exposure(self, api_key: str | None) -> None:
        """Refuse to open every route to the network by accident: a non-loopback host needs a key or an explicit yes."""
        if api_key or self.allow_no_key or is_loopback(self.host):
            return
        raise ConfigError(f"host {self.host!r} exposes the server to the network without an API key; set "
                          f"{API_KEY_ENV} (clients send 'Authorization: Bearer <key>'), or pass --allow_no_key true")


    def log_paths(self) -> tuple[Path, Path]:
        """This server's feedback file and answers file: one name per replica when replicas share a Hub repo."""
        import socket

        from hf_adapt.serve.answers import ANSWERS_DIR

        log = Path(self.feedback_log)
        stem = log.name.removesuffix(".jsonl")
        if self.feedback_repo:
            stem = f"{stem}-{self.replica or socket.gethostname()}"
        return log.with_name(f"{stem}.jsonl"), log.parent / ANSWERS_DIR / f"{stem}.jsonl"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
