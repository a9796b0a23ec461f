"""Hyperparameter search for the recipes (``hf-adapt tune``): the search space (``space``) and the Optuna study, pruning
and progress (``study``). The command itself is :mod:`hf_adapt.recipes.tune`."""
