"""Compare arms (linear probe, LoRA, full, from scratch, from a continued-pretraining output, ...) across
label budgets on one dataset: results.csv/.md/.json and a transfer curve.

Usage:
    accelerate launch recipes/transfer_study.py                            # quickstart model and data, 3 regimes x 3 budgets
    accelerate launch recipes/transfer_study.py --finetune_config recipes/configs/mnist_efficientnet_lora.yaml \
        --arms '[linear_probe, adapter, {name: scratch_full, regime: full, pretrained: false, weights_file: null}]' \
        --budgets '[5, 20, 1.0]' --output_dir outputs/mnist_transfer
    accelerate launch --multi_gpu --num_processes 2 recipes/transfer_study.py --config study.yaml
    hf-adapt transfer_study --config study.yaml --seeds '[1, 2, 3]'          # same parser, same main

Every field is listed by ``--help``; ``--config`` YAML first, then flags override it.
"""

import sys

from hf_adapt.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("transfer_study"))
