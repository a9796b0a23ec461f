"""``POST /v1/feedback``: what a user said about an answer, written to the :class:`~hf_adapt.feedback.log.FeedbackLog`
that ``hf-adapt feedback`` trains on, with the answer's input, output, model and revision.

A body names the answer by ``id`` and carries one or more of: ``feedback`` (``"up"``/``"down"`` or a score),
``correction`` (the right label, or the right answer), or names two answers to the same prompt as
``{"chosen_id": ..., "rejected_id": ...}`` (a preference pair). ``user_id`` is hashed before it is stored;
``metadata`` is kept. With ``record_inputs: false`` the body must carry the ``input`` itself. The record is
checked whole before anything is written: an unknown id is a 404 and a malformed body a 422, each naming the
field, and the log is untouched.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from hf_adapt.errors import DataError

router = APIRouter()

FIELDS = {"id", "feedback", "correction", "chosen_id", "rejected_id", "input", "user_id", "metadata"}


def _answer(server, answer_id: Any, field: str) -> dict[str, Any]:
    if not isinstance(answer_id, str) or not answer_id:
        raise HTTPException(422, f"{field} must be the id of an answer (prediction_id, or a completion's id)")
    answer = server.store.get(answer_id)
    if answer is None:
        raise HTTPException(404, f"{field} {answer_id!r}: no answer with this id was given by this server's store "
                                 f"({server.store.path})")
    return answer


def _prompt(server, answer: dict[str, Any], body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The prompt as the feedback log keeps it (a text, or messages), and what metadata it needs beside."""
    given = answer.get("input", body.get("input"))
    if given is None:
        raise HTTPException(422, "input: this server does not keep inputs (record_inputs: false); send the input "
                                 "the answer was for with the feedback")
    if "input" in answer and "input" in body and body["input"] != answer["input"]:
        raise HTTPException(422, f"input: differs from the input answer {answer['id']!r} was given for")
    if isinstance(given, dict) and "image_sha256" in given:  # images are kept by hash, never in the log
        return f"image sha256:{given['image_sha256']}", {"image_sha256": given["image_sha256"]}
    if isinstance(given, dict):  # a table row: its text as the model read it, the row itself beside
        return server.served.model.text_of(given), {"row": given}
    return given, {}


def _check_correction(server, correction: Any) -> Any:
    """The correction as the log keeps it; refused (422) when it cannot be one for this model."""
    if correction is None:
        return None
    if server.served.kind == "classifier":
        labels = server.served.model.labels
        if server.served.model.task.name == "regression":  # the right number, kept as text like the answer
            if isinstance(correction, bool) or not isinstance(correction, int | float) or correction != correction:
                raise HTTPException(422, f"correction {correction!r}: this regression model of {labels[0]!r} takes "
                                         "the right number")
            return number_text(correction)
        if server.served.model.task.name == "multi_label":  # the right label set, kept as text like the answer
            if not isinstance(correction, list) or not all(isinstance(c, str) and c in labels for c in correction):
                raise HTTPException(422, f"correction {correction!r}: this multi-label model takes the right list of "
                                         f"labels, each one of {labels} (an empty list: none applies)")
            return labels_text(correction)
        if correction not in labels:
            raise HTTPException(422, f"correction {correction!r} is not one of this model's labels {labels}")
    return correction


def labels_text(labels: list[str]) -> str:
    """A multi-label answer or correction as the feedback log (text) keeps it: the labels, sorted, joined by "|"."""
    return "|".join(sorted(set(labels)))


def number_text(value: float) -> str:
    """A regression answer or correction as the feedback log (text) keeps it: the number, 10 significant digits."""
    return format(float(value), ".10g")


def feedback_record(server, body: Any) -> dict[str, Any]:
    """The keyword arguments of ``FeedbackLog.record`` for a request body; 4xx on anything that does not fit."""
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown field(s) {unknown}; feedback has {sorted(FIELDS)}")
    pair = "chosen_id" in body or "rejected_id" in body
    if pair:
        if "id" in body or "feedback" in body:
            raise HTTPException(422, "a preference names chosen_id and rejected_id, without id or feedback")
        chosen, rejected = _answer(server, body.get("chosen_id"), "chosen_id"), _answer(server, body.get("rejected_id"), "rejected_id")
        if chosen.get("input") != rejected.get("input") or chosen["id"] == rejected["id"]:
            raise HTTPException(422, "chosen_id and rejected_id must be two answers to the same input")
        answer, judged = chosen, {"chosen": chosen["output"], "rejected": rejected["output"]}
        completion = None
    else:
        answer = _answer(server, body.get("id"), "id")
        completion, judged = answer["output"], body.get("feedback")
        if judged is None and body.get("correction") is None:
            raise HTTPException(422, "feedback: give a thumb ('up'/'down'), a score, or a correction")
        if judged is None:  # a correction alone: the answer was wrong unless it is the same
            judged = "up" if _check_correction(server, body["correction"]) == answer["output"] else "down"
    correction = _check_correction(server, body.get("correction"))
    if correction is not None and isinstance(answer["output"], list):  # a chat answer: corrected as a message
        correction = [{"role": "assistant", "content": correction}] if isinstance(correction, str) else correction
    prompt, extra = _prompt(server, answer, body)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise HTTPException(422, "metadata must be an object")
    metadata = {**metadata, **extra, "answer_id": answer["id"], "answered_at": answer["time"]}
    return {"prompt": prompt, "completion": completion, "feedback": judged, "correction": correction,
            "model": answer["model"], "model_revision": answer["model_revision"], "user_id": body.get("user_id"),
            "metadata": metadata}


def record_feedback(server, body: Any) -> dict[str, Any]:
    """Check ``body`` whole, write it to the log and count it; the record as written. 4xx on anything that does not
    fit, with nothing written. The API and the reviewer page both come through here."""
    from hf_adapt.feedback.log import kind_of

    values = feedback_record(server, body)
    if values["user_id"] is not None and not isinstance(values["user_id"], str):
        raise HTTPException(422, "user_id must be a string")
    try:
        entry = server.log.record(**values)
    except DataError as err:  # the log's own check: nothing was written
        raise HTTPException(422, str(err)) from None
    server.metrics.feedback.labels(kind=kind_of(entry["feedback"])).inc()
    return entry


@router.post("/v1/feedback")
async def feedback(request: Request) -> JSONResponse:
    server = request.app.state.server
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    entry = record_feedback(server, body)
    return JSONResponse({"recorded": True, "id": entry["metadata"]["answer_id"], "timestamp": entry["timestamp"]},
                        status_code=201)
