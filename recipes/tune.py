"""Search a recipe's settings (finetune, continual, feedback) with Optuna, then retrain the best config and test it once.

Usage:
    python recipes/tune.py --config recipes/configs/credit_minilm_lora.yaml --search recipes/configs/tune_credit.yaml --n_trials 12
    hf-adapt tune --config base.yaml --search space.yaml --timeout 3600              # same parser, same main
    hf-adapt tune --config base.yaml --storage postgresql://tuner@db/hf_adapt --n_trials 100   # on every worker
"""

import sys

from hf_adapt.recipes.tune import run

if __name__ == "__main__":
    sys.exit(run())
