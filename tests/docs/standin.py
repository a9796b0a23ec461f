"""``hf-adapt`` as the docs' examples run it: the real command line (``hf_adapt.cli.main``), with the tiny stand-ins
of ``$HF_ADAPT_DOCS_STANDINS`` appended to the training commands, so an example that trains for minutes on the real
MiniLM trains for seconds on a 2-layer BERT and German Credit's rows. Later flags win, so the example's own flags
stay in force unless a stand-in replaces them (the model, the data, the epochs, the threads).

``HF_ADAPT_DOCS_STANDINS`` is JSON: ``{"finetune": ["--model_name_or_path", "/tmp/tiny_bert", ...], ...}``, keyed by
the command's leading words (``"feedback train"``). ``--help`` runs as written."""

from __future__ import annotations

import json
import os
import sys


def with_standins(argv: list[str]) -> list[str]:
    if "--help" in argv or "-h" in argv:
        return argv
    table = json.loads(os.environ.get("HF_ADAPT_DOCS_STANDINS", "{}"))
    for command, extra in sorted(table.items(), key=lambda item: -len(item[0].split())):
        words = command.split()
        if argv[:len(words)] == words:
            return argv + extra
    return argv


if __name__ == "__main__":
    from hf_adapt.cli import main

    sys.exit(main(with_standins(sys.argv[1:])))
