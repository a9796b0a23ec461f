"""Teach one model a stream of experiences (new classes, new domains, new tasks), test every experience after
each one, and write the accuracy matrix, forgetting, a heat map and a model card; gate the release on forgetting.

Usage:
    accelerate launch recipes/continual.py --config recipes/configs/continual_split_mnist.yaml
    accelerate launch recipes/continual.py --config recipes/configs/continual_split_mnist.yaml \
        --strategy replay --strategy_options '{buffer_size: 200}' --max_forgetting 0.05
    accelerate launch recipes/continual.py --config update.yaml --init_from org/served-model    # a new version
    accelerate launch --multi_gpu --num_processes 2 recipes/continual.py --config ...
    hf-adapt continual --config ...                                                           # same parser, same main

A run whose forgetting exceeds --max_forgetting writes its outputs, pushes nothing and exits 2.
Every field is listed by ``--help``; ``--config`` YAML first, then flags override it.
"""

import sys

from hf_adapt.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("continual"))
