"""Classifier (and regression model) routes: ``POST /v1/predict`` (micro-batched) and ``POST /v1/explain``.

A classifier answers each input with its label and class probabilities; a ``task: regression`` model with its
``value``, the predicted number in the target's unit.

Inputs are what the model was trained on: texts, table rows (JSON objects), or images (base64 strings or
``{"image_base64": ...}`` in JSON, or multipart file uploads; DICOM included). A string is never read as a path
on the server. Every input is checked (:func:`hf_adapt.inputs.check_inputs`) before it queues, so a bad one is a
422 naming its index, and the model only sees inputs that fit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from hf_adapt.errors import DataError
from hf_adapt.serve.answers import new_id
from hf_adapt.serve.feedback import labels_text, number_text

router = APIRouter()


def image_bytes(item: Any, index: int, max_pixels: int) -> bytes:
    """An uploaded image's bytes, its size checked from its header before any pixel is decoded."""
    if isinstance(item, dict) and set(item) == {"image_base64"}:
        item = item["image_base64"]
    if isinstance(item, str):
        try:
            item = base64.b64decode(item.split(",", 1)[-1] if item.startswith("data:") else item, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"input {index}: an image is sent as base64 (a string, or {{\"image_base64\": ...}}) "
                            "or as a multipart file upload") from None
    if not isinstance(item, bytes | bytearray) or not item:
        raise DataError(f"input {index}: this model reads images: send base64 strings or upload files")
    try:
        width, height = _image_size(bytes(item))
    except HTTPException as err:
        raise HTTPException(err.status_code, f"input {index}: {err.detail}") from None
    if width * height > max_pixels:
        raise HTTPException(413, f"input {index}: the image has {width} x {height} = {width * height:,} pixels, over "
                                 f"the server's limit of {max_pixels:,} (max_image_pixels)")
    return bytes(item)


def _image_size(data: bytes) -> tuple[int, int]:
    from hf_adapt.dicom import has_dicom_magic

    if has_dicom_magic(data):
        import pydicom

        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(header.get("Columns", 0)), int(header.get("Rows", 0))
        except Exception:  # noqa: BLE001 - an unreadable file is named by the image check that follows
            return 0, 0
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own bomb warning: the limit here is the server's
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as err:  # PIL's own hard limit, far over any sane upload
        raise HTTPException(413, f"the image is a decompression bomb: {err}") from None
    except Exception:  # noqa: BLE001 - not an image: the check that follows names it
        return 0, 0


async def _read_inputs(request: Request, limit: int, max_pixels: int, image_model: bool) -> tuple[list[Any], str | None]:
    """The request's inputs (JSON ``input``/``inputs``, or multipart ``files``) and its ``task``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = form.getlist("files") or form.getlist("file")
        items: list[Any] = [await upload.read() for upload in uploads if hasattr(upload, "read")]
        task = form.get("task")
    else:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not JSON; send {\"inputs\": [...]} (or multipart files for images)") from None
        if not isinstance(body, dict) or ("inputs" in body) == ("input" in body):
            raise HTTPException(422, "send one of 'input' (one input) or 'inputs' (a list)")
        items = body["inputs"] if "inputs" in body else [body["input"]]
        if not isinstance(items, list):
            raise HTTPException(422, "'inputs' must be a list")
        task = body.get("task")
    if not items:
        raise HTTPException(422, "no inputs given")
    if len(items) > limit:
        raise HTTPException(413, f"{len(items)} inputs in one request; the server takes at most {limit} (max_inputs)")
    if image_model:
        items = [image_bytes(item, i, max_pixels) for i, item in enumerate(items)]
    return items, task


def as_logged(item: Any) -> Any:
    """How an input is kept with its answer: texts and rows as given, images by their SHA-256."""
    if isinstance(item, bytes | bytearray):
        return {"image_sha256": hashlib.sha256(item).hexdigest(), "bytes": len(item)}
    return item


def run_batch(predictor, items: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
    """Predictions for ``(task, checked input)`` pairs of several requests: one forward pass per task."""
    results: list[dict[str, Any] | None] = [None] * len(items)
    by_task: dict[str | None, list[int]] = {}
    for index, (task, _) in enumerate(items):
        by_task.setdefault(task, []).append(index)
    for task, indices in by_task.items():
        for index, prediction in zip(indices, predictor.predict([items[i][1] for i in indices], task=task)):
            results[index] = prediction
    return results


def _decision(point: dict[str, Any] | None, probabilities: dict[str, float]) -> dict[str, Any] | None:
    if not point:
        return None
    positive = point["positive_label"]
    return {"positive_label": positive, "threshold": point["threshold"], "rule": point.get("rule"),
            "target": point.get("target"), "positive": probabilities[positive] >= point["threshold"]}


@router.post("/v1/predict")
async def predict(request: Request) -> JSONResponse:
    from hf_adapt.inputs import check_inputs

    server = request.app.state.server
    served = server.served
    predictor = served.model
    cfg = server.config
    images = predictor.data_info["kind"] == "image"
    server.batcher.expect()
    try:
        items, task = await _read_inputs(request, cfg.max_inputs, cfg.max_image_pixels, images)
        logged = [as_logged(item) for item in items]
        if images:  # decoding is work: off the event loop
            checked = await server.batcher.call(lambda: check_inputs(items, predictor.data_info))
        else:
            checked = check_inputs(items, predictor.data_info)
    finally:
        server.batcher.withdraw()
    results = await server.batcher.submit([(task, item) for item in checked])
    return JSONResponse(keep_answers(server, logged, results, task))


def keep_answers(server, logged: list[Any], results: list[tuple[dict[str, Any], Any]], task: str | None) -> dict[str, Any]:
    """Store each prediction (with the version that made it) as an answer, and the response that names them."""
    answers, out = [], []
    for item, (prediction, served) in zip(logged, results):  # served: the version that answered, swaps or not
        answer_id = new_id("pred")
        if "value" in prediction:  # a regression model's number (the feedback log keeps it as text)
            answers.append({"id": answer_id, "kind": "prediction", "model": served.name,
                            "model_revision": served.revision, "input": item,
                            "output": number_text(prediction["value"])})
            out.append({"prediction_id": answer_id, "value": prediction["value"]})
            continue
        if "labels" in prediction:  # a multi-label model's label set (the feedback log keeps it as text)
            answers.append({"id": answer_id, "kind": "prediction", "model": served.name,
                            "model_revision": served.revision, "input": item,
                            "output": labels_text(prediction["labels"]), "probabilities": prediction["probabilities"]})
            out.append({"prediction_id": answer_id, "labels": prediction["labels"],
                        "probabilities": prediction["probabilities"]})
            continue
        decision = _decision(served.model.operating_point, prediction["probabilities"])
        answers.append({"id": answer_id, "kind": "prediction", "model": served.name, "model_revision": served.revision,
                        "input": item, "output": prediction["label"], "probabilities": prediction["probabilities"],
                        **({"task": task} if task else {})})
        out.append({"prediction_id": answer_id, "label": prediction["label"],
                    "probabilities": prediction["probabilities"], **({"decision": decision} if decision else {}),
                    **({"group": prediction["group"]} if "group" in prediction else {})})  # a fairness rule decided
    server.store.add(answers)
    return {"model": served.name, "revision": served.revision, "predictions": out}


@router.post("/v1/explain")
async def explain(request: Request) -> JSONResponse:
    """The explanation ``hf-adapt explain`` writes, as JSON (``"png": true`` adds the figure, base64)."""
    from hf_adapt.inputs import check_inputs

    server = request.app.state.server
    predictor = server.served.model
    cfg = server.config
    body = await request.json() if not request.headers.get("content-type", "").startswith("multipart/") else {}
    items, _ = await _read_inputs(request, 1, cfg.max_image_pixels, predictor.data_info["kind"] == "image")
    target, steps, png = body.get("target"), int(body.get("steps", 50)), bool(body.get("png", False))
    if target is not None and target not in predictor.labels:
        raise HTTPException(422, f"target {target!r} is not one of this model's labels {predictor.labels}")
    if not 1 <= steps <= 500:
        raise HTTPException(422, f"steps must be in 1..500, got {steps}")
    (item,) = await server.batcher.call(lambda: check_inputs(items, predictor.data_info))
    result = await server.batcher.call(lambda: explain_one(predictor, item, target, steps, png))
    return JSONResponse({"model": server.served.name, "revision": server.served.revision, **result})


def explain_one(predictor, item: Any, target: str | None, steps: int, png: bool) -> dict[str, Any]:
    """What ``hf-adapt explain`` writes for one checked input, as a dict (``png``: with the figure, base64)."""
    import json
    import tempfile
    from pathlib import Path

    from hf_adapt.explain import explain_checked, write_explanation

    result = explain_checked(predictor, item, target, steps)
    with tempfile.TemporaryDirectory(prefix="hf-adapt-explain-") as folder:  # private; gone when answered
        png_path, json_path = write_explanation(result, folder)
        facts = json.loads(Path(json_path).read_text())
        if png:
            facts["png_base64"] = base64.b64encode(Path(png_path).read_bytes()).decode()
    return facts
