"""Continue pretraining a text backbone on unlabelled text (masked or causal LM), or pretrain on a labelled source set.

Usage:
    accelerate launch recipes/pretrain.py --data corpus.txt                               # LoRA, MLM on MiniLM-L6
    accelerate launch recipes/pretrain.py --data reviews.csv --text_column review --regime full --learning_rate 5e-5
    accelerate launch recipes/pretrain.py --model_name_or_path my/decoder --objective clm --data corpus.txt
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain.py --config my.yaml
    hf-adapt pretrain --config my.yaml --max_length 256                                  # same parser, same main

The output holds the held-out perplexity before and after training; ``hf-adapt finetune --init_from``
starts a classifier from it. Every field is listed by ``--help``; ``--config`` YAML first, then flags.
"""

import sys

from hf_adapt.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("pretrain"))
