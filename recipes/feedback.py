"""Train the next version of a model on its users' feedback with a TRL trainer and a peft adapter.

Usage::

    accelerate launch recipes/feedback.py --config recipes/configs/feedback_dpo.yaml
    accelerate launch recipes/feedback.py --feedback logs/bot.jsonl --trainer kto \\
        --init_from my-org/bot --init_from_revision v3 --feedback_since parent \\
        --min_win_rate 0.55 --push_to_hub --hub_model_id my-org/bot

The same as ``hf-adapt feedback train``: one parser, one ``main``.
"""

import sys

from hf_adapt.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("feedback train", sys.argv[1:]))
