"""``hf-adapt export``: a classifier output in the layout other serving stacks load, with no hf-adapt needed.

- ``merged``: the adapter merged into its base, saved in the base library's own layout.
  A transformers model with its own head: ``save_pretrained`` with ``id2label`` and the tokenizer, for
  ``transformers.pipeline``, text-embeddings-inference or vLLM. A mean-pooling head (sentence-transformers bases):
  the sentence-transformers layout (Transformer, mean Pooling, a Dense layer that gives the logits), for
  ``SentenceTransformer(...).encode`` and text-embeddings-inference. A timm model: ``model.safetensors`` and
  ``config.json`` (``label_names``) for ``timm.create_model("local-dir:...")``.
- ``onnx``: the model with its preprocessing left outside (token ids or pixel tensors in, logits out), exported
  with ``torch.onnx`` and checked against the PyTorch logits with onnxruntime; the largest difference is written
  to ``export.json`` and must be under ``tolerance``.

Table models keep their row template: ``rows.json`` holds the feature columns and the template, and the
export's README shows how a row becomes the model's text. Every export's README has a usage snippet for its form.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.outputs import commit, discard, staging_path

logger = logging.getLogger("hf_adapt.export")

FORMATS = ("merged", "onnx")
ROWS_FILE = "rows.json"


def export(output_dir: str, out: str | Path, format: Literal["merged", "onnx"] = "merged", revision: str | None = None,
           trust_remote_code: bool = False, tolerance: float = 1e-4) -> Path:
    """Write ``output_dir``'s classifier to ``out`` (atomically: complete or absent) in ``format``; returns ``out``."""
    from hf_adapt.predict import load_adapted

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not one of {FORMATS}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the export")
    from hf_adapt.predict import local_dir
    from hf_adapt.run_record import read_record

    directory = local_dir(output_dir, revision)  # a Hub repo is fetched once, here
    record = read_record(directory)
    if record.kind in ("policy", "language_model"):
        return _language_model(output_dir, directory, out, format, trust_remote_code, record.kind)
    predictor = load_adapted(str(directory), merge=True, trust_remote_code=trust_remote_code)
    if predictor.data_info.get("table_features"):
        raise ModelError("export writes text, table-as-text and image classifiers; this is a hybrid table model "
                         "(table_features), whose wide and deep paths no transformers or ONNX layout holds yet: "
                         "serve it with hf-adapt serve or load_adapted")
    if predictor.task.name != "classification":
        why = {"regression": "whose output is standardised (hf_adapt.json's task.target)",
               "multi_label": "whose labels are decided by per-label thresholds (hf_adapt.json's task.thresholds)"}
        raise ModelError(f"export writes single-label classifiers; this is a {predictor.task.name} model, "
                         f"{why.get(predictor.task.name, 'of another kind')}, which no exported layout undoes yet: "
                         "serve it with hf-adapt serve or load_adapted")
    continual = predictor.info.get("continual") or {}
    if continual.get("scenario") == "task" or len(set((continual.get("adapters") or {}).values())) > 1:
        raise ModelError("export takes single-model outputs; this continual model routes inputs by task or through "
                         "per-experience adapters")
    with _staged(out) as staging:
        facts = {"source": str(output_dir), "format": format, "labels": predictor.labels,
                 "input_kind": predictor.data_info["kind"]}
        if format == "merged":
            facts["layout"] = _merged(predictor, staging)
        else:
            facts.update(_onnx(predictor, staging, tolerance))
        if predictor.data_info["kind"] == "table":
            (staging / ROWS_FILE).write_text(json.dumps({
                "feature_columns": predictor.data_info["feature_columns"],
                "text_template": predictor.data_info.get("text_template")}, indent=2) + "\n")
        (staging / "export.json").write_text(json.dumps(facts, indent=2) + "\n")
        (staging / "README.md").write_text(usage(facts, predictor.data_info))
    logger.info("exported %s as %s to %s", output_dir, facts.get("layout", format), out)
    return out


# ----------------------------------------------------------------------------- merged


def _language_model(output_dir: str, directory: Path, out: Path, format: str, trust_remote_code: bool,
                    kind: str) -> Path:
    """A feedback policy or a causal LM, merged, in transformers' layout: what vLLM and TGI serve."""
    from hf_adapt.serve.models import Generator

    if format != "merged":
        raise ConfigError("language models export as merged (then vLLM, TGI or optimum take it from there); "
                          "--format onnx is for classifiers")
    generator = Generator.load(directory, kind, trust_remote_code, "cpu")
    with _staged(out) as staging:
        generator.model.save_pretrained(str(staging), safe_serialization=True)
        generator.tokenizer.save_pretrained(str(staging))
        facts = {"source": str(output_dir), "format": "merged", "layout": "transformers-causal-lm", "labels": []}
        (staging / "export.json").write_text(json.dumps(facts, indent=2) + "\n")
        (staging / "README.md").write_text(
            f"# Export of {output_dir} (transformers causal LM, adapter merged)\n\n"
            "On a GPU: `vllm serve <this folder>` (an OpenAI-compatible server), or TGI.\n\n```python\n"
            "from transformers import pipeline\ngenerate = pipeline(\"text-generation\", model=\".\")\n"
            "answer = generate(\"How was it?\", max_new_tokens=8, do_sample=False)[0][\"generated_text\"]\n"
            "print(answer)\n```\n")
    return out


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``out`` that is swapped in whole when the block ends, or removed if it fails."""
    staging = staging_path(out)
    staging.mkdir(parents=True)
    try:
        yield staging
        commit(staging, out)
    except BaseException:
        discard(staging)
        raise


def _merged(predictor, directory: Path) -> str:
    model = predictor.model
    labels = predictor.labels
    if predictor.backbone.family == "timm":
        from timm.models import save_for_hf

        for tensor in [*model.parameters(), *model.buffers()]:  # merged conv weights can come out strided
            tensor.data = tensor.data.contiguous()
        save_for_hf(model, str(directory), model_config={"label_names": labels, "num_classes": len(labels)},
                    safe_serialization=True)
        return "timm"
    from hf_adapt.backbones.transformers import MeanPoolingClassifier

    tokenizer = predictor.preprocessor.tokenizer
    if isinstance(model, MeanPoolingClassifier):
        _sentence_transformer(model, tokenizer, labels, directory)
        return "sentence-transformers"
    if not hasattr(model, "save_pretrained"):
        raise ModelError(f"a {type(model).__name__} has no layout that transformers loads")
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return "transformers"


def _sentence_transformer(model, tokenizer, labels: list[str], directory: Path) -> None:
    """Encoder, mean pooling, and the head as a Dense layer with no activation: ``encode`` gives the logits."""
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Pooling, Transformer

    with tempfile.TemporaryDirectory(prefix="hf-adapt-export-") as encoder_dir:
        model.encoder.save_pretrained(encoder_dir, safe_serialization=True)
        tokenizer.save_pretrained(encoder_dir)
        transformer = Transformer(encoder_dir, max_seq_length=tokenizer.model_max_length
                                  if tokenizer.model_max_length < 100_000 else 512)
        head = model.classifier
        dense = Dense(head.in_features, head.out_features, bias=True, activation_function=nn.Identity())
        dense.linear.load_state_dict(head.state_dict())
        pooling = Pooling(head.in_features, pooling_mode="mean")
        SentenceTransformer(modules=[transformer, pooling, dense], device="cpu").save(str(directory))
    (directory / "label_map.json").write_text(json.dumps({"id2label": dict(enumerate(labels))}, indent=2) + "\n")


# ----------------------------------------------------------------------------- onnx


class _Logits(nn.Module):
    def __init__(self, predictor, names: list[str]):
        super().__init__()
        self.model, self.backbone, self.names = predictor.model, predictor.backbone, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.backbone.logits(self.model, dict(zip(self.names, tensors)))


def _onnx(predictor, directory: Path, tolerance: float) -> dict[str, Any]:
    import numpy as np
    import onnxruntime

    batch = predictor.preprocessor.collate(_examples(predictor), train=False)
    names = list(batch)
    wrapper = _Logits(predictor, names).eval()
    tensors = tuple(batch[name] for name in names)
    dynamic = {name: {0: "batch", **({1: "sequence"} if batch[name].dim() == 2 else {})} for name in names}
    path = directory / "model.onnx"
    with torch.no_grad():
        expected = wrapper(*tensors).numpy()
        torch.onnx.export(wrapper, tensors, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic, dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {name: batch[name].numpy() for name in names})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise ModelError(f"the ONNX model's logits differ from PyTorch's by {difference:.3g} (over {tolerance:g}); "
                         "not exported")
    if predictor.data_info["kind"] != "image":
        predictor.preprocessor.tokenizer.save_pretrained(str(directory))
    shapes = {name: list(batch[name].shape[1:]) for name in names if batch[name].dim() == 4}  # images: C, H, W
    return {"inputs": names, "max_abs_difference": difference, "tolerance": tolerance,
            "checked_on": f"{len(expected)} inputs", **({"input_shapes": shapes} if shapes else {})}


def _examples(predictor) -> list[Any]:
    """A few inputs of the model's kind to trace and check the export with: varied lengths for texts."""
    kind = predictor.data_info["kind"]
    if kind == "image":
        from PIL import Image

        return [Image.new("RGB", (64, 64), (40 * i, 90, 160)) for i in range(3)]
    return ["a short one", "a somewhat longer text, with more words to make the sequence longer than the first",
            "three"]


# ----------------------------------------------------------------------------- usage


def usage(facts: dict[str, Any], data_info: dict[str, Any]) -> str:
    """The export's README: what it is, and a snippet that loads it and scores an input (run by the tests)."""
    layout = facts.get("layout", "onnx")
    if data_info["kind"] == "table":
        prepare = ('import json\nrows = json.load(open("rows.json"))\n'
                   'row = {c: "..." for c in rows["feature_columns"]}  # your row\n'
                   'def text_of(row):  # how hf-adapt renders a row (whole floats without ".0", missing as "missing")\n'
                   '    def value(v):\n'
                   '        return "missing" if v is None else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)\n'
                   '    if rows["text_template"]:\n'
                   '        return rows["text_template"].format(**{c: value(row.get(c)) for c in rows["feature_columns"]})\n'
                   '    return ", ".join(f"{c}: {value(row.get(c))}" for c in rows["feature_columns"])\n'
                   'texts = [text_of(row)]\n')
    elif data_info["kind"] == "text":
        prepare = 'texts = ["your text"]\n'
    else:
        prepare = 'from PIL import Image\nimages = [Image.new("RGB", (224, 224))]  # your images\n'
    body = {
        "transformers": 'from transformers import pipeline\nclassify = pipeline("text-classification", model=".", top_k=None)\n'
                        'print(classify(texts))\n',
        "sentence-transformers": 'import json\nfrom sentence_transformers import SentenceTransformer\n'
                                 'model = SentenceTransformer(".", device="cpu")\n'
                                 'labels = json.load(open("label_map.json"))["id2label"]\n'
                                 'logits = model.encode(texts, convert_to_tensor=True)\n'
                                 'print([{labels[str(i)]: float(p) for i, p in enumerate(row)} for row in logits.softmax(-1)])\n',
        "timm": 'import timm, torch\nmodel = timm.create_model("local-dir:.", pretrained=True).eval()\n'
                'config = timm.data.resolve_data_config({}, model=model)\n'
                'transform = timm.data.create_transform(**config)\n'
                'with torch.no_grad():\n    print(model(torch.stack([transform(i.convert("RGB")) for i in images])).softmax(-1))\n',
        "onnx": ('import numpy as np, onnxruntime\nsession = onnxruntime.InferenceSession("model.onnx")\n' + (
                 'from transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(".")\n'
                 'inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="np")\n'
                 'feed = {i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()}\n'
                 'print(session.run(["logits"], feed)[0])\n' if data_info["kind"] != "image" else
                 f'pixels = np.zeros((len(images), {", ".join(map(str, facts.get("input_shapes", {}).get("pixel_values", [3, 224, 224])))}), dtype=np.float32)  # normalised as the model was trained\n'
                 'print(session.run(["logits"], {"pixel_values": pixels})[0])\n')),
    }[layout]
    check = (f"\nThe ONNX logits were checked against PyTorch's: largest difference {facts['max_abs_difference']:.2g} "
             f"(tolerance {facts['tolerance']:g}).\n" if layout == "onnx" else "")
    return (f"# Export of {facts['source']} ({layout})\n\nLabels: {', '.join(facts['labels'])}.{check}\n"
            f"```python\n{prepare}{body}```\n")
