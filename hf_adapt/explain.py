"""Explain one prediction: Grad-CAM for images, integrated gradients for texts and table rows.

Both methods come from captum. Images get captum's ``LayerGradCam`` on the last convolutional
feature map (``hf_adapt.figures`` draws the overlay the model card uses too). Texts get
``LayerIntegratedGradients`` over the input embedding layer: the baseline is the same sequence
with every non-special token replaced by the pad token, so the token attributions add up to
``output(input) - output(baseline)`` up to the reported convergence delta. A table row rendered
as text is explained per original column: the row is rendered piece by piece, each column's
character span is kept, and the attributions of the tokens inside a span are summed.

``explain_row`` / ``explain_text`` / ``explain_image`` take the model pieces directly (a recipe
can call them at training time); ``explain`` loads an output folder with ``load_adapted`` and is
what ``hf-adapt explain`` runs; ``write_explanation`` writes the PNG and the JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.images import IMAGE_SUFFIXES, exists, open_image

logger = logging.getLogger("hf_adapt.explain")

TEMPLATE_BUCKET = "(template text)"
TABLE_SUFFIXES = (".json", ".csv")


# ----------------------------------------------------------------------------- texts and table rows


def render_pieces(row: dict[str, Any], feature_columns: list[str], template: str | None) -> list[tuple[str | None, str]]:
    """``render_row``'s text as ``(column, text)`` pieces in order; ``column`` is None for fixed template text.

    The default ``column: value, ...`` rendering counts ``column: `` as part of that column and
    ``, `` as template text. Joined, the pieces are exactly ``hf_adapt.data.render_row``'s text.
    """
    from hf_adapt.data import format_value, render_row

    missing = [c for c in feature_columns if c not in row]
    if missing:
        raise DataError(f"the row lacks the feature columns {missing} this model reads "
                        f"(it has {sorted(row)}; the model needs {feature_columns})")
    if template is None:
        pieces: list[tuple[str | None, str]] = []
        for i, column in enumerate(feature_columns):
            if i:
                pieces.append((None, ", "))
            pieces.append((column, render_row(row, [column], None)))
    else:
        # each column's text as render_row formats it: format specs and conversions then apply exactly as there
        values = {c: format_value(row[c]) for c in feature_columns}
        pieces = []
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if literal:
                pieces.append((None, literal))
            if field is not None:
                one = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                pieces.append((field.split(".")[0].split("[")[0], one.format_map(values)))
        merged: list[tuple[str | None, str]] = []
        for column, text in pieces:  # parse() splits literals at escaped braces: one template piece each
            if column is None and merged and merged[-1][0] is None:
                merged[-1] = (None, merged[-1][1] + text)
            else:
                merged.append((column, text))
        pieces = merged
    rendered = render_row(row, feature_columns, template)
    if "".join(text for _, text in pieces) != rendered:  # would misplace every span after it: refuse, loudly
        raise DataError(f"the template {template!r} renders differently piece by piece than whole; "
                        "its columns cannot be told apart for the explanation")
    return pieces


def input_embedding_layer(model: Any) -> tuple[str, Any]:
    """The token embedding layer of a transformers text classifier, through peft and ``MeanPoolingClassifier``.

    Returns ``(name, module)``: the first ``PreTrainedModel`` inside ``model`` (the classifier
    itself, or a mean-pooling head's encoder) answers ``get_input_embeddings()``.
    """
    from transformers import PreTrainedModel

    names = {id(module): name for name, module in model.named_modules()}
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            layer = module.get_input_embeddings()
            if layer is not None:
                return names.get(id(layer), type(layer).__name__), layer
    raise ModelError(f"{type(model).__name__} has no transformers input embedding layer to attribute to")


def _integrated_gradients(model, backbone, preprocessor, labels: list[str], text: str, target: str | None,
                          steps: int, predicted: str | None, row: dict[str, Any] | None = None,
                          task=None) -> dict[str, Any]:
    """Token attributions of ``text`` (captum ``LayerIntegratedGradients`` on the input embeddings); a hybrid
    table model reads ``row`` (whose text is ``text``), its table features held as they are."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from hf_adapt.figures import eval_mode
    from hf_adapt.tasks import Classification

    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    tokenizer = preprocessor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{type(tokenizer).__name__} is a slow tokenizer: token offsets need a fast one")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in preprocessor.collate([text if row is None else row], train=False).items()}
    spans = tokenizer([text], truncation=True, max_length=preprocessor.max_length,
                      return_offsets_mapping=True, return_special_tokens_mask=True)
    if spans["input_ids"][0] != batch["input_ids"][0].tolist():
        raise ModelError("the tokenizer gives other token ids with offsets than the preprocessor does")
    if tokenizer.pad_token_id is None:
        raise ModelError(f"{type(tokenizer).__name__} has no pad token for the integrated-gradients baseline")
    special = torch.tensor(spans["special_tokens_mask"][0], dtype=torch.bool, device=device)
    baseline_ids = batch["input_ids"].masked_fill(~special.unsqueeze(0), tokenizer.pad_token_id)
    extra_names = [k for k in batch if k != "input_ids"]

    def model_logits(input_ids, *extra):
        return backbone.logits(model, {"input_ids": input_ids, **dict(zip(extra_names, extra))})

    with eval_mode(model), torch.no_grad():
        logits = model_logits(batch["input_ids"], *(batch[k] for k in extra_names)).float()
    choice = (task or Classification()).explained(logits.cpu().numpy().astype(np.float64)[0], labels, target,
                                                  predicted)
    t, other, explained = choice["index"], choice["other"], choice["explained_output"]

    def forward(input_ids, *extra):
        out = model_logits(input_ids, *extra)
        return out[:, t] if other is None else out[:, t] - out[:, other]

    layer_name, layer = input_embedding_layer(model)
    extra = tuple(batch[k] for k in extra_names)
    with eval_mode(model), torch.enable_grad():
        attributions, delta = LayerIntegratedGradients(forward, layer).attribute(
            batch["input_ids"], baselines=baseline_ids, additional_forward_args=extra, n_steps=steps,
            return_convergence_delta=True,
        )
    with eval_mode(model), torch.no_grad():
        at_input, at_baseline = (float(forward(ids, *extra)[0]) for ids in (batch["input_ids"], baseline_ids))
    per_token = attributions.detach().sum(dim=-1)[0].float().cpu().numpy()
    ids = batch["input_ids"][0].tolist()
    pieces = tokenizer.convert_ids_to_tokens(ids)
    tokens = [
        {"position": i, "token": text[start:end], "piece": piece, "start": start, "end": end,
         "attribution": float(per_token[i])}
        for i, (piece, (start, end), is_special) in enumerate(zip(pieces, spans["offset_mapping"][0], special.tolist()))
        if not is_special
    ]
    return {
        "text": text,
        **choice["facts"],
        "method": (f"integrated gradients (captum LayerIntegratedGradients) on {layer_name}, {steps} steps; "
                   "baseline: every token replaced by the pad token, special tokens kept"),
        "explained_output": explained,
        "output_at_input": at_input,
        "output_at_baseline": at_baseline,
        "convergence_delta": float(delta.detach().reshape(-1)[0]),
        "max_length": preprocessor.max_length,
        "tokens": tokens,
        "_forward": (forward, batch, baseline_ids, extra_names),  # for the table path (hybrid), then dropped
    }


def explain_text(model, backbone, preprocessor, labels: list[str], text: str, target: str | None = None,
                 steps: int = 50, *, predicted: str | None = None, task=None) -> dict[str, Any]:
    """Token attributions for one text, for the predicted class (or ``target``).

    Args:
        model: the classifier (peft-wrapped or not), as ``backbone.logits`` takes it.
        backbone, preprocessor: from the build; the preprocessor must be a text one (tokenizer, max_length).
        labels: class names, in logit order.
        text: the input as the model reads it.
        target: the label to explain; default the predicted one.
        steps: integration steps; more steps, smaller convergence delta.
        predicted: the label the caller's predictor gives (e.g. with an operating point applied); the
            arg max of the probabilities when None.
        task: the model's :class:`hf_adapt.tasks.Task` (default classification); a regression model's single
            output is explained, and the prediction is reported in the target's unit.

    Returns:
        a JSON-ready dict: ``kind`` "text", prediction, probabilities, target, method, the explained
        output at input and baseline, ``convergence_delta`` and ``tokens`` (special tokens excluded);
        the token attributions sum to ``output_at_input - output_at_baseline`` up to the delta.
    """
    _check_text_model(preprocessor)
    result = _integrated_gradients(model, backbone, preprocessor, labels, str(text), target, steps, predicted,
                                   task=task)
    result.pop("_forward")
    return {"kind": "text", **result}


def explain_row(model, backbone, preprocessor, data_info: dict[str, Any], labels: list[str], row: dict[str, Any],
                target: str | None = None, steps: int = 50, *, predicted: str | None = None,
                task=None) -> dict[str, Any]:
    """Per-column attributions for one table row rendered as text (``data_info["kind"] == "table"``), or for one
    row of a hybrid table model (``data_info["table_features"]``; its text is the rendered row or a text column).

    ``data_info`` is ``hf_adapt.json``'s ``data`` (``feature_columns``, ``text_template``); other
    arguments as for :func:`explain_text`. Besides its fields the result holds ``row`` (each
    column's rendered value) and ``columns``: one entry per column the model reads, plus the
    ``"(template text)"`` bucket, sorted by ``|attribution|``, each with the summed attribution, its
    token count and whether truncation (``max_length``) cut it. Tokens carry their ``column``.

    A hybrid's columns also enter through the table paths: their features are attributed by integrated
    gradients too (from no features: numbers at their training mean, no category), with the text held at its
    pad-token baseline, so each column's ``attribution`` is ``text_attribution + table_attribution`` and all of
    them add up to ``output_at_input - output_at_baseline`` (both baselines) up to the two convergence deltas.
    """
    from hf_adapt.data import format_value

    _check_text_model(preprocessor)
    hybrid = bool(data_info.get("table_features"))
    if data_info.get("kind") != "table" and not hybrid:
        raise DataError(f"explain_row explains table rows; this model reads {data_info.get('kind')} inputs")
    if data_info.get("kind") == "text":  # a hybrid whose text is a column of the row
        column = data_info["input_column"]
        pieces: list[tuple[str | None, str]] = [(column, str(row[column]))]
    else:
        pieces = render_pieces(row, list(data_info["feature_columns"]), data_info.get("text_template"))
    text = "".join(piece for _, piece in pieces)
    result = _integrated_gradients(model, backbone, preprocessor, labels, text, target, steps, predicted,
                                   row=row if hybrid else None, task=task)
    forward_parts = result.pop("_forward")
    table, table_baseline, table_delta = (_table_attributions(model, forward_parts, preprocessor.encoder, steps)
                                          if hybrid else (None, None, None))

    spans, at = [], 0
    for column, piece in pieces:
        spans.append((column or TEMPLATE_BUCKET, at, at + len(piece)))
        at += len(piece)
    shown = list(dict.fromkeys([column for column, _ in pieces if column is not None] + list(table or {})))
    buckets = {name: {"attribution": 0.0, "tokens": 0} for name in [*shown, TEMPLATE_BUCKET]}
    for token in result["tokens"]:
        overlaps = [(min(end, token["end"]) - max(start, token["start"]), name) for name, start, end in spans]
        best, name = max(overlaps, key=lambda o: o[0])  # first span wins a tie
        token["column"] = name if best > 0 else TEMPLATE_BUCKET
        buckets[token["column"]]["attribution"] += token["attribution"]
        buckets[token["column"]]["tokens"] += 1
    kept_end = max((token["end"] for token in result["tokens"]), default=0)
    truncated = {name for name, start, end in spans if text[max(start, kept_end):end].strip()}
    values = {c: format_value(row[c]) if c != data_info.get("input_column") else row[c] for c in shown}
    columns = [{"column": name, "value": values.get(name), "attribution": bucket["attribution"],
                "tokens": bucket["tokens"], "truncated": name in truncated}
               for name, bucket in buckets.items()]
    if table is not None:
        for entry in columns:
            path = table.get(entry["column"], {"attribution": 0.0})
            entry.update(text_attribution=entry["attribution"], table_attribution=path["attribution"],
                         attribution=entry["attribution"] + path["attribution"])
        result["output_at_baseline"] = table_baseline
        result["method"] += ("; table paths (wide and deep): integrated gradients on the encoded features, "
                             f"{steps} steps, from no features (numbers at their training mean, no category), "
                             "the text at its baseline")
        result["table_features"] = [f for path in table.values() for f in path["features"]]
        result["table_convergence_delta"] = table_delta
    columns.sort(key=lambda c: -abs(c["attribution"]))
    if truncated - {TEMPLATE_BUCKET}:
        logger.warning("max_length %d cut the text: columns %s are partly or wholly unseen",
                       preprocessor.max_length, sorted(truncated - {TEMPLATE_BUCKET}))
    return {"kind": "table", "row": values, **result, "columns": columns,
            "truncated_columns": [c for c in shown if c in truncated]}


def _table_attributions(model, forward_parts, encoder, steps: int) -> tuple[dict[str, Any], float, float]:
    """Per column of a hybrid's table features, integrated-gradients attributions through the wide and deep
    paths (the text at its pad-token baseline); the output with neither text nor features; the convergence
    delta."""
    import torch
    from captum.attr import IntegratedGradients

    from hf_adapt.figures import eval_mode

    forward, batch, baseline_ids, extra_names = forward_parts
    features = batch["table_features"]

    def of_features(x):
        n = x.shape[0]
        args = [x if k == "table_features" else batch[k].expand(n, *batch[k].shape[1:]) for k in extra_names]
        return forward(baseline_ids.expand(n, -1), *args)

    with eval_mode(model), torch.enable_grad():
        attributions, delta = IntegratedGradients(of_features).attribute(
            features, baselines=torch.zeros_like(features), n_steps=steps, return_convergence_delta=True)
    with eval_mode(model), torch.no_grad():
        at_baseline = float(of_features(torch.zeros_like(features))[0])
    out: dict[str, Any] = {}
    for (column, name), value, a in zip(encoder.features, features[0].tolist(), attributions[0].tolist()):
        path = out.setdefault(column, {"attribution": 0.0, "features": []})
        path["attribution"] += a
        if value or a:  # a category's other one-hot positions say nothing
            path["features"].append({"column": column, "feature": name, "value": value, "attribution": a})
    return out, at_baseline, float(delta.detach().reshape(-1)[0])


def _check_text_model(preprocessor) -> None:
    if getattr(preprocessor, "input_kind", None) != "text":
        raise DataError(f"this model reads {getattr(preprocessor, 'input_kind', 'unknown')} inputs, not text")


# ----------------------------------------------------------------------------- images


def explain_image(model, backbone, preprocessor, labels: list[str], image: Any, target: str | None = None,
                  *, predicted: str | None = None, task=None) -> dict[str, Any]:
    """Grad-CAM (captum ``LayerGradCam``) of the predicted class (or ``target``) for one PIL image.

    The map is taken on the last convolutional feature stage (``figures.gradcam_target_layer``)
    and drawn over the image as the model sees it (resized, cropped); models without such a map
    (ViT and other token-sequence backbones) raise ``ModelError``. The result holds the PNG bytes
    under ``overlay_png``, which :func:`write_explanation` writes and leaves out of the JSON.
    ``predicted`` and ``task`` as for :func:`explain_text` (a regression model's one output is mapped: the regions
    that raise its prediction).
    """
    import torch

    from hf_adapt import figures
    from hf_adapt.figures import eval_mode
    from hf_adapt.tasks import Classification

    if getattr(preprocessor, "input_kind", None) != "image":
        raise DataError(f"this model reads {getattr(preprocessor, 'input_kind', 'unknown')} inputs, not images")
    device = next(model.parameters()).device
    batch = preprocessor.collate([image], train=False)["pixel_values"].to(device)
    layer = figures.gradcam_target_layer(model, example=batch)
    if layer is None:
        raise ModelError("Grad-CAM needs a convolutional feature map, and this backbone has none "
                         "(e.g. a ViT, whose last stage is a token sequence); no image explanation for it")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_name = next((name for name, module in base.named_modules() if module is layer), type(layer).__name__)

    def forward(pixels):
        return backbone.logits(model, {"pixel_values": pixels})

    with eval_mode(model), torch.no_grad():
        outputs = forward(batch).float().cpu().numpy().astype(np.float64)[0]
    choice = (task or Classification()).explained(outputs, labels, target, predicted)
    t, facts = choice["index"], choice["facts"]
    classes = "probabilities" in facts  # Grad-CAM maps one logit, not a binary log-odds
    shown_label = facts["predicted_label"]
    confidence = f" ({facts['probabilities'][shown_label]:.2f})" if shown_label in facts.get("probabilities", {}) else ""
    title = f"predicted {shown_label}{confidence}; Grad-CAM for {labels[t]}"
    shown = figures.as_seen(batch, preprocessor.data_config) if hasattr(preprocessor, "data_config") else [image]
    empty = not figures.gradcam_maps(forward, layer, batch, [t]).any()
    if empty:
        logger.warning("the Grad-CAM map for %s is zero everywhere: the last feature map holds no positive "
                       "evidence for it, so the overlay shows none", labels[t])
    with tempfile.TemporaryDirectory(prefix="hf-adapt-explain-") as tmp:
        (path,) = figures.gradcam_overlays(forward, layer, shown, batch, [t], [title], tmp, prefix="overlay")
        png = Path(path).read_bytes()
    return {
        "kind": "image",
        "image_size": list(image.size),
        "model_input_size": list(batch.shape[-2:]),
        **facts,
        "method": f"Grad-CAM on {layer_name}",
        "explained_output": f"logit({labels[t]})" if classes else choice["explained_output"],
        "map_is_empty": bool(empty),
        "title": title,
        "overlay_png": png,
    }


# ----------------------------------------------------------------------------- writing


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _title(result: dict[str, Any]) -> str:
    predicted = result["predicted_label"]
    probabilities = result.get("probabilities") or {}  # a multi-label prediction is several labels: no one number
    confidence = f" ({probabilities[predicted]:.2f})" if predicted in probabilities else ""
    return (f"predicted {predicted}{confidence}; "
            f"integrated gradients of {result['explained_output'].split(':')[0]}")


def write_explanation(result: dict[str, Any], out_dir: str | os.PathLike, stem: str = "explanation") -> tuple[Path, Path]:
    """Write ``{stem}.png`` and ``{stem}.json`` into ``out_dir``, each atomically; returns both paths.

    The PNG is the Grad-CAM overlay for images, a bar chart of column attributions for table
    rows, of the largest token attributions for texts.
    """
    from hf_adapt import figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, json_path = out / f"{stem}.png", out / f"{stem}.json"
    if result["kind"] == "image":
        _replace_atomically(png, result["overlay_png"])
    elif result["kind"] == "table":
        figures.attribution_bars([c["column"] for c in result["columns"]], [c["attribution"] for c in result["columns"]],
                                 png, _title(result), xlabel=f"attribution to {result['explained_output'].split(':')[0]}")
    else:
        figures.attribution_bars([f"{t['token']} (#{t['position']})" for t in result["tokens"]],
                                 [t["attribution"] for t in result["tokens"]], png, _title(result),
                                 xlabel=f"attribution to {result['explained_output'].split(':')[0]}")
    facts = {k: v for k, v in result.items() if not isinstance(v, bytes)}
    _replace_atomically(json_path, (json.dumps(facts, indent=2, default=str) + "\n").encode())
    return png, json_path


# ----------------------------------------------------------------------------- from an output folder


def _read_row(path: Path, row: int) -> dict[str, Any]:
    if row < 0:
        raise ConfigError(f"--row must be 0 or more, got {row}")
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(path.read_text())
        except ValueError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        rows = value if isinstance(value, list) else [value]
    else:
        import pandas as pd

        try:
            rows = pd.read_csv(path).to_dict("records")
        except (ValueError, pd.errors.ParserError) as err:
            raise DataError(f"{path}: cannot be read as CSV ({err})") from err
    if row >= len(rows):
        raise DataError(f"--row {row} is out of range: {path} holds {len(rows)} row(s) (0..{len(rows) - 1})")
    if not isinstance(rows[row], dict):
        raise DataError(f"{path}: row {row} is not an object of column: value pairs")
    return rows[row]


def _read_image(path: Path, data_info: dict[str, Any]):
    """The image as the predictor opens it (DICOM files and series too, windowed and sliced as in training)."""
    from hf_adapt.dicom import VolumeReading

    return open_image(str(path), str(path), data_info.get("dicom_window"), VolumeReading.from_info(data_info))


def read_input(input: str, data_info: dict[str, Any], row: int = 0) -> tuple[Any, dict[str, Any]]:
    """The raw input ``explain`` hands the model, and how to name it in the JSON.

    Images: an image file, or a folder holding one DICOM series. Table rows: a .json file (one row
    object, or a list of them picked by ``row``) or a CSV file and ``row``. Texts: a .txt file, or the
    text itself.
    """
    kind = data_info.get("kind")
    path = Path(input)
    suffix = path.suffix.lower()
    looks_like_file = suffix in (*IMAGE_SUFFIXES, *TABLE_SUFFIXES, ".txt", ".tsv", ".jsonl") and "\n" not in input
    if looks_like_file and not path.is_file():
        raise DataError(f"input file not found: {input}")
    if kind == "image":
        if suffix in (*TABLE_SUFFIXES, ".txt", ".tsv", ".jsonl") or not exists(path):
            raise DataError(f"this model reads images: INPUT must be an image file ({', '.join(IMAGE_SUFFIXES)}) or "
                            f"a DICOM series folder; got {input!r}")
        return _read_image(path, data_info), {"path": str(path)}
    if suffix in IMAGE_SUFFIXES:
        raise DataError(f"{input} is an image, but this model reads {kind} inputs (text)")
    if kind == "table":
        if suffix not in TABLE_SUFFIXES:
            raise DataError(f"this model reads table rows: INPUT must be a .json file holding one row object, "
                            f"or a .csv file with --row N; got {input!r}")
        item = _read_row(path, row)
        missing = [c for c in data_info["feature_columns"] if c not in item]
        if missing:
            raise DataError(f"{path} row {row} lacks the feature columns {missing} this model reads "
                            f"(it has {sorted(item)})")
        return item, {"path": str(path), "row": row}
    if kind == "text":
        if suffix in TABLE_SUFFIXES:
            raise DataError(f"{input} is a table file, but this model reads plain text: give a .txt file or the text")
        if path.is_file():
            return path.read_text(), {"path": str(path)}
        return input, {"text": input}
    raise ModelError(f"explain handles image, table and text models; this output's data kind is {kind!r}")


def _default_out(input: str, source: dict[str, Any]) -> Path:
    if "path" in source:
        return Path("explanations") / Path(input).stem
    return Path("explanations") / f"text-{hashlib.sha1(input.encode()).hexdigest()[:8]}"


def explain_checked(predictor, item: Any, target: str | None = None, steps: int = 50) -> dict[str, Any]:
    """The explanation of one already checked input (:func:`hf_adapt.inputs.check_inputs`) by the method its kind
    takes, of the ``target`` label or else of the label users get (operating point included)."""
    task = predictor.task
    predicted = predictor.predict(item)[0]["label"] if task.name == "classification" else None
    pieces = (predictor.model, predictor.backbone, predictor.preprocessor)
    kind = predictor.data_info["kind"]
    if kind == "image":
        return explain_image(*pieces, predictor.labels, item, target, predicted=predicted, task=task)
    if kind == "table" or predictor.data_info.get("table_features"):
        return explain_row(*pieces, predictor.data_info, predictor.labels, item, target, steps, predicted=predicted,
                           task=task)
    return explain_text(*pieces, predictor.labels, item, target, steps, predicted=predicted, task=task)


def explain(output_dir: str, input: str, out: str | os.PathLike | None = None, row: int = 0,
            target: str | None = None, steps: int = 50) -> tuple[Path, Path]:
    """Explain one prediction of an hf-adapt output; what ``hf-adapt explain`` runs.

    Args:
        output_dir: an output folder (or Hub repo) ``load_adapted`` reads.
        input: an image file, a row file (.json / .csv), a .txt file or the text, by the model's kind.
        out: folder for the files; default ``./explanations/<input stem>/``.
        row: which row of a CSV (or JSON list) file.
        target: the label to explain; default the predicted one (operating point applied).
        steps: integrated-gradients steps (texts and rows).

    Returns:
        the PNG and JSON paths: ``explanation.*``, or ``explanation_row<N>.*`` for a row of a file of many.
    """
    from hf_adapt.artifacts import read_run_info
    from hf_adapt.inputs import check_inputs
    from hf_adapt.predict import load_adapted

    directory = Path(output_dir)
    predictor = None
    if directory.is_dir():  # the inputs are checked before the model loads
        info, labels = read_run_info(directory)
    else:  # a Hub repo; load_adapted names a missing folder or a repo it cannot read
        predictor = load_adapted(output_dir)
        info, labels = predictor.info, predictor.labels
    continual = info.get("continual") or {}
    if continual.get("scenario") == "task" or len(set((continual.get("adapters") or {}).values())) > 1:
        raise ModelError("explain handles single-model outputs; this continual model routes inputs by task or "
                         "through per-experience adapters")
    if target is not None and target not in labels:
        raise ConfigError(f"--target {target!r} is not one of this model's labels {labels}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    item, source = read_input(input, info["data"], row)
    (item,) = check_inputs([item], info["data"])  # the check predict runs: refused here, before the model loads
    predictor = predictor or load_adapted(output_dir)
    result = {"input": source, "model": str(output_dir), **explain_checked(predictor, item, target, steps)}
    if info.get("operating_point"):
        point = info["operating_point"]
        result["operating_point"] = {k: point[k] for k in ("positive_label", "negative_label", "threshold", "rule")
                                     if k in point}
    many_rows = "row" in source and (row > 0 or Path(input).suffix.lower() == ".csv")
    stem = f"explanation_row{row}" if many_rows else "explanation"
    return write_explanation(result, out if out is not None else _default_out(input, source), stem)
