"""``hf-adapt serve OUTPUT_DIR | REPO_ID[@revision]``: load the output, build the app, run uvicorn."""

from __future__ import annotations

import json
import logging
import os

from hf_adapt.errors import ConfigError
from hf_adapt.serve.config import API_KEY_ENV, ServeConfig

logger = logging.getLogger("hf_adapt.serve")

CONFIG_ENV = "HF_ADAPT_SERVE_CONFIG"  # how ``--workers N`` hands the config to each worker process
EXTRA_MODULES = ("fastapi", "uvicorn", "prometheus_client", "multipart")


def check_extra() -> None:
    import importlib.util

    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"hf-adapt serve needs {', '.join(missing)}: pip install 'hf-adapt[serve]'")


def build_app(cfg: ServeConfig):
    """The app for ``cfg``: the model loaded and ready before the first request is taken."""
    import torch

    from hf_adapt.serve.app import Server, create_app
    from hf_adapt.serve.models import load_served

    if cfg.torch_num_threads:
        torch.set_num_threads(cfg.torch_num_threads)
    served = load_served(cfg.model, cfg.revision, cfg.trust_remote_code, cfg.device)
    logger.info("serving %s (%s, revision %s); feedback to %s", served.name, served.kind, served.revision,
                cfg.feedback_log)
    return create_app(Server(cfg, served, api_key=os.environ.get(API_KEY_ENV) or None,
                             user_salt=os.environ.get(cfg.user_salt_env) or None))


def worker_app():
    """Each ``--workers`` process builds its own app from the config the parent passed down."""
    from hf_adapt.config import config_from_dict

    return build_app(config_from_dict(ServeConfig, json.loads(os.environ[CONFIG_ENV]), source=CONFIG_ENV))


def main(cfg: ServeConfig) -> None:
    import uvicorn

    check_extra()
    cfg.check_exposure(os.environ.get(API_KEY_ENV))
    if cfg.workers > 1:
        from dataclasses import asdict

        os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
        uvicorn.run("hf_adapt.serve.main:worker_app", factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers,
                    log_level="info", access_log=False)
        return
    uvicorn.run(build_app(cfg), host=cfg.host, port=cfg.port, log_level="info", access_log=False)
