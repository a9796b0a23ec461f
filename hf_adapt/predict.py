"""Serve an hf-adapt output: ``load_adapted(path_or_repo_id)`` returns a :class:`Predictor`.

Every input is checked by :func:`hf_adapt.inputs.check_inputs` against what the model was trained on (``hf_adapt.json``'s
``data`` block) before the model sees it; what does not fit is refused with a ``DataError`` that names the
input's index in the batch, the column, what was expected and what was got.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_adapt.artifacts import check_artifacts, check_base, read_run_info, restore_model
from hf_adapt.backbones import get_builder
from hf_adapt.data import render_row
from hf_adapt.errors import DataError, ModelError
from hf_adapt.inputs import as_batch, check_inputs
from hf_adapt.metrics import softmax
from hf_adapt.transfer import backbone_spec

# ----------------------------------------------------------------------------- the predictor


class Predictor:
    """Labels and probabilities for images, texts or table rows; each input is checked first (:func:`check_inputs`)."""

    def __init__(self, model: torch.nn.Module, backbone, preprocessor, labels: list[str], info: dict[str, Any],
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.model = model.to(device).eval()
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.labels = labels
        self.info = info
        self.device = torch.device(device)
        self.batch_size = batch_size
        data = info["data"]
        kind = data.get("kind") or ("image" if preprocessor.input_kind == "image"
                                    else "table" if data.get("feature_columns") else "text")  # outputs before "kind"
        self.data_info = {**data, "kind": kind}
        from hf_adapt.tasks import task_from_info

        self.task = task_from_info(info, labels)  # what the outputs mean: classes, label sets, or a number
        self.fairness = None  # group decision rules (hf_adapt.fairness.GroupRules), applied where rows carry the column
        if info.get("fairness"):
            from hf_adapt.fairness import GroupRules

            self.fairness = GroupRules.from_dict(info["fairness"])
        self.calibration = None
        if info.get("calibration"):
            from hf_adapt.calibration import Calibration

            self.calibration = Calibration.from_dict(info["calibration"])

    def _model_input(self, item: Any) -> Any:
        """A checked input as the preprocessor takes it: a row rendered as training rendered it."""
        if isinstance(item, dict) and not self.data_info.get("table_features"):  # a hybrid reads the row itself
            return render_row(item, self.data_info["feature_columns"], self.data_info.get("text_template"))
        return item

    def text_of(self, row: dict[str, Any]) -> str:
        """The text the model reads of a (checked) table row: the row rendered, or a hybrid's text column."""
        return self.preprocessor.text(row) if self.data_info.get("table_features") else self._model_input(row)

    def _draw_key(self, item: Any) -> Any:
        """What keys a row's random draws under group rules: its text, or a hybrid's row rendered over its columns."""
        if isinstance(item, dict) and self.data_info.get("table_features"):
            from hf_adapt.table_features import row_columns, row_key

            return row_key(item, sorted(row_columns(self.data_info)))
        return self._model_input(item)

    def _to_input(self, item: Any) -> Any:
        return self._model_input(check_inputs([item], self.data_info)[0])

    @torch.no_grad()
    def logits(self, inputs: Any, task: str | None = None) -> torch.Tensor:
        """Logits as a CPU float tensor, one row per input (a single input may be passed bare); calibrated when
        the run fitted a calibration (their softmax is the calibrated probabilities).

        ``task``: for a task-incremental continual model, the experience the inputs belong to (its
        classes alone compete); other models take none.
        """
        items = as_batch(inputs)
        route = self._route(task)
        # rows and texts are all checked before any model work; images are read (and checked) a chunk at a time
        eager = self.data_info["kind"] != "image"
        items = check_inputs(items, self.data_info) if eager else items
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            chunk = chunk if eager else check_inputs(chunk, self.data_info, first_index=start)
            chunk = [self._model_input(x) for x in chunk]
            batch = {k: v.to(self.device) for k, v in self.preprocessor.collate(chunk, train=False).items()}
            out.append(route(batch).float().cpu())
        logits = torch.cat(out)
        if self.calibration is not None:  # fitted on validation by the run; the probabilities users get
            logits = torch.from_numpy(self.calibration.apply(logits.numpy()).astype(np.float32))
        return logits

    def _route(self, task: str | None):
        """How a batch becomes logits: the model as is, or through a continual model's tasks and adapters."""
        continual = self.info.get("continual") or {}
        tasks = continual.get("tasks") or {}
        if continual.get("scenario") == "task" and task is None:
            raise ModelError(f"this model is task-incremental: pass task= one of {sorted(tasks)}")
        if task is not None and task not in tasks:
            raise ModelError(f"task {task!r} is not one of this model's experiences {sorted(tasks)}"
                             if tasks else "this model takes no task")
        from hf_adapt.continual.routing import label_logits, mask_logits, routed_logits

        def allowed(name: str) -> torch.Tensor:
            mask = torch.zeros(len(self.labels), dtype=torch.bool)
            mask[tasks[name]["classes"]] = True
            return mask

        adapters = continual.get("adapters")
        if adapters and len(set(adapters.values())) > 1 and continual.get("routing") == "label" and task is None:
            experts = [(adapters[name], allowed(name)) for name in adapters]  # multi-label: each label's own adapter
            return lambda batch: label_logits(self.model, self.backbone.logits, batch, experts)
        if adapters and len(set(adapters.values())) > 1:
            experts = [(adapters[name], allowed(name)) for name in adapters if task is None or name == task]
            return lambda batch: routed_logits(self.model, self.backbone.logits, batch, experts,
                                               torch.zeros(len(next(iter(batch.values()))), dtype=torch.long)
                                               if task is not None else None)
        if task is not None:
            return lambda batch: mask_logits(self.backbone.logits(self.model, batch), allowed(task))
        return lambda batch: self.backbone.logits(self.model, batch)

    def predict_proba(self, inputs: Any, task: str | None = None) -> np.ndarray:
        """Class probabilities as a numpy array, columns in ``self.labels`` order."""
        return softmax(self.logits(inputs, task).numpy().astype(np.float64))

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The decision threshold chosen on validation (``positive_label``, ``threshold``, ``rule``,
        ``target``), or None: then the most probable label is predicted."""
        return self.info.get("operating_point")

    def decide(self, probs: np.ndarray) -> list[str]:
        """Labels for rows of probabilities: the operating point's threshold on the positive class, else argmax."""
        from hf_adapt.operating_point import decide_labels

        return decide_labels(probs, self.labels, self.operating_point)

    def predict(self, inputs: Any, task: str | None = None, sensitive: list[Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"label", "probabilities"}`` per input; a single input may be passed bare.

        With an operating point the label is the positive one when its probability reaches the
        threshold (e.g. the threshold that gave 95 % sensitivity on validation). With group rules
        (``fairness``), a row that carries the sensitive column (or whose value is in ``sensitive``,
        one per input) is decided by its group's rule, and its result says which group it was.
        """
        if not isinstance(inputs, list):
            inputs = [inputs]
        probs = self.predict_proba(inputs, task)
        labels = self.decide(probs)
        groups: list[str | None] = [None] * len(inputs)
        if self.fairness is not None:
            labels, groups = self._group_decisions(inputs, probs, labels, sensitive)
        return [{"label": label, "probabilities": dict(zip(self.labels, map(float, p))),
                 **({"group": group} if group is not None else {})}
                for label, p, group in zip(labels, probs, groups)]

    def _group_decisions(self, inputs: list[Any], probs: np.ndarray, labels: list[str], sensitive: list[Any] | None):
        """The group rules' labels for the rows whose sensitive value is known; the others keep ``labels``."""
        from hf_adapt.subgroups import group_values

        rules = self.fairness
        if sensitive is not None and len(sensitive) != len(inputs):
            raise DataError(f"sensitive has {len(sensitive)} values for {len(inputs)} inputs")
        known = [i for i, item in enumerate(inputs)
                 if sensitive is not None or (isinstance(item, dict) and rules.column in item)]
        if not known:
            return labels, [None] * len(inputs)
        values = [sensitive[i] if sensitive is not None else inputs[i][rules.column] for i in known]
        groups = group_values(values, rules.bins, rules.column)
        positive = self.labels.index(rules.positive_label or self.labels[1])
        keys = [self._draw_key(inputs[i]) for i in known]
        if not all(isinstance(k, str) for k in keys):
            raise DataError("group rules apply to table rows and texts")
        decided = rules.decide(probs[known, positive], groups, keys)
        labels, out_groups = list(labels), [None] * len(inputs)
        for i, group, yes in zip(known, groups, decided):
            labels[i] = self.labels[positive] if yes else self.labels[1 - positive]
            out_groups[i] = group
        return labels, out_groups

    def __call__(self, inputs: Any, task: str | None = None) -> list[dict[str, Any]]:
        return self.predict(inputs, task)


class Regressor(Predictor):
    """Numbers for images, texts or table rows, in the unit of the target the model was trained on: the model's
    standardised output times the training split's standard deviation plus its mean (``hf_adapt.json``'s
    ``task.target``). Each input is checked first, as for a classifier."""

    @property
    def target(self) -> str:
        """The name of the column the model predicts."""
        return self.labels[0]

    def predict_values(self, inputs: Any) -> np.ndarray:
        """The predicted numbers, one per input, as a float64 array."""
        return self.task.decode(self.logits(inputs).numpy())

    def predict(self, inputs: Any, task: str | None = None, sensitive: list[Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"value"}`` per input (the prediction in the target's unit); a single input may be passed bare."""
        if task is not None or sensitive is not None:
            raise ModelError("a regression model takes no task and no sensitive values")
        return [{"value": float(v)} for v in self.predict_values(inputs if isinstance(inputs, list) else [inputs])]

    def predict_proba(self, inputs: Any, task: str | None = None) -> np.ndarray:
        raise ModelError(f"this is a regression model of {self.target!r}: it has no class probabilities; use "
                         "predict or predict_values")

    def decide(self, probs: np.ndarray) -> list[str]:
        raise ModelError(f"this is a regression model of {self.target!r}: it decides no labels; use predict_values")


class MultiLabelPredictor(Predictor):
    """Label sets for images, texts or table rows: one sigmoid probability per label, and every label whose
    probability reaches its threshold (chosen on validation, ``hf_adapt.json``'s ``task.thresholds``)."""

    def predict_proba(self, inputs: Any, task: str | None = None) -> np.ndarray:
        """Each label's probability (independent sigmoids; a row's need not sum to 1), columns in ``self.labels``
        order."""
        from hf_adapt.multilabel import sigmoid

        return sigmoid(self.logits(inputs, task).numpy())

    @property
    def thresholds(self) -> dict[str, float]:
        """Each label's decision threshold on its probability."""
        return dict(zip(self.labels, self.task.info()["thresholds"]))

    def decide(self, probs: np.ndarray) -> list[list[str]]:
        """The labels each row of probabilities carries: those at or above their threshold (possibly none)."""
        thresholds = np.asarray(self.task.info()["thresholds"])
        return [[name for name, on in zip(self.labels, row) if on] for row in np.asarray(probs) >= thresholds]

    def predict(self, inputs: Any, task: str | None = None, sensitive: list[Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"labels", "probabilities"}`` per input; a single input may be passed bare."""
        if sensitive is not None:
            raise ModelError("a multi-label model has no group rules: it takes no sensitive values")
        probs = self.predict_proba(inputs if isinstance(inputs, list) else [inputs], task)
        return [{"labels": labels, "probabilities": dict(zip(self.labels, map(float, p)))}
                for labels, p in zip(self.decide(probs), probs)]


PREDICTORS = {"classification": Predictor, "regression": Regressor,  # by hf_adapt.json's task
              "multi_label": MultiLabelPredictor}


def _not_a_repo_id(text: str) -> str | None:
    """Why ``text`` cannot be a Hub repo id (it is a path), or None when it can be one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in (".", "..") or os.path.isabs(text):
        return "it is a path"
    if "\\" in text or text.count("/") > 1:
        return "a Hub repo id is 'name' or 'owner/name'"
    try:
        validate_repo_id(text)
    except HFValidationError as err:
        return f"not a valid one: {err}"
    return None


def local_dir(path_or_repo_id: str, revision: str | None) -> Path:
    """The folder of an output: a local folder, else the snapshot of a Hub repo (downloaded, or from the cache).

    A string that can only be a path is never sent to the Hub; one that could be either (``owner/name``
    with no such folder here) is, and if the Hub has no such repo the error names both possibilities.
    """
    text = os.fspath(path_or_repo_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{text} is a file, not an hf-adapt output folder")
    folder = f"no such folder: {path.absolute()}"
    not_a_repo = _not_a_repo_id(text)
    if not_a_repo:
        raise ModelError(f"{text} is neither an hf-adapt output folder ({folder}) nor a Hub repo id ({not_a_repo})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{text} is neither an hf-adapt output folder ({folder}) nor a Hub repo that can be read "
                         f"({type(err).__name__}: {detail})") from err


def load_adapted(path_or_repo_id: str, merge: bool = False, device: str = "cpu",
                 revision: str | None = None, trust_remote_code: bool = False) -> Predictor:
    """Rebuild a trained model from an output dir or Hub repo: a :class:`Predictor` of labels, or for a
    ``task: regression`` output a :class:`Regressor` of numbers in the target's unit.

    Args:
        path_or_repo_id: an hf-adapt output directory or a Hub repo holding one.
        merge: fold the adapter into the base weights (no adapter overhead at inference).
            Methods that cannot be merged (e.g. prompt tuning) stay unmerged.
        device: where to run the model.
        revision: branch, tag or commit, for Hub repos.
        trust_remote_code: allow a base model whose code lives in its repo; an output folder
            cannot turn this on by itself, since folders from the Hub are untrusted.
    """
    directory = local_dir(path_or_repo_id, revision)
    info, labels = read_run_info(directory)  # another recipe's output is refused here, naming its loader
    check_artifacts(directory, info)  # damaged weights fail now, before the base model is built
    from hf_adapt.tasks import task_from_info

    task = task_from_info(info, labels, str(directory / "hf_adapt.json"))  # a damaged task block too
    if info.get("operating_point_error"):
        import logging

        logging.getLogger("hf_adapt.predict").warning(
            "%s has no operating point (%s): it predicts the most probable class", path_or_repo_id,
            info["operating_point_error"])
    model_info = info["model"]
    if model_info.get("trust_remote_code") and not trust_remote_code:
        raise ModelError(f"{path_or_repo_id}: the base model needs trust_remote_code=True, which runs code "
                         "from its repo; pass it to load_adapted only if you trust that code")
    builder = get_builder(info["family"])
    with tempfile.TemporaryDirectory(prefix="hf-adapt-load-") as workdir:  # a transfer chain's backbone, written out
        spec = backbone_spec(directory, model_info, len(labels), Path(workdir), trust_remote_code,
                             image_size=model_info.get("image_size"), max_length=model_info.get("max_length", 256),
                             pooling=model_info.get("pooling") or "model")
        backbone = builder.build(spec)
    check_base(backbone, model_info, path_or_repo_id)
    backbone.preprocessor = builder.load_preprocessor(str(directory), spec)  # the one saved with the model
    if info["data"].get("table_features"):  # a hybrid table model: the text backbone with its table paths
        backbone = _hybrid(backbone, directory, info["data"], len(labels))
    model = restore_model(backbone, info["regime"], directory)
    adapters = (info.get("continual") or {}).get("adapters") or {}
    for name in sorted(set(adapters.values()) - {"default"}):  # one adapter per experience
        model.load_adapter(str(directory / name), adapter_name=name)
    if merge and hasattr(model, "merge_and_unload") and len(set(adapters.values())) <= 1:  # several: routed, unmerged
        try:
            model = model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError):
            pass  # method without a merge: serve it unmerged
    return PREDICTORS[task.name](model, backbone, backbone.preprocessor, labels, info, device=device)


def _hybrid(backbone, directory: Path, data_info: dict[str, Any], num_labels: int):
    """The text ``backbone`` with the table paths of the hybrid saved in ``directory`` (their weights follow)."""
    from hf_adapt.backbones.hybrid import RowText, hybrid_backbone
    from hf_adapt.table_features import TableEncoder

    encoder = TableEncoder.load(directory)
    if sorted(encoder.columns) != sorted(data_info["table_features"]):
        raise ModelError(f"{directory}: table_features.json encodes columns {encoder.columns}, but hf_adapt.json "
                         f"records {data_info['table_features']}")
    return hybrid_backbone(backbone, encoder, RowText.from_data_info(data_info), num_labels)
