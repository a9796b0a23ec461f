"""Fine-tune a pretrained backbone for classification and write an evaluated adapter with a model card.

Usage:
    accelerate launch recipes/finetune.py                                  # offline quickstart: MiniLM + LoRA on German Credit
    accelerate launch recipes/finetune.py --config recipes/configs/mnist_efficientnet_lora.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/finetune.py --config my.yaml
    hf-adapt finetune --config my.yaml --learning_rate 5e-4                # same parser, same main

Every field is listed by ``--help``; ``--config`` YAML first, then flags override it.
"""

import sys

from hf_adapt.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("finetune"))
