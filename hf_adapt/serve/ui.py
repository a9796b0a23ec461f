"""The page for people, mounted at ``/ui``: a reviewer enters a row, a text or an image, sees the prediction, its
explanation and the card's headline numbers, and gives a thumb or the right label; for language models, a chat
with a thumb on each answer. Everything it does goes through what the HTTP routes use: answers are stored, and
feedback is checked and written to the same log, so a click is a record ``hf-adapt feedback`` trains on.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from hf_adapt.errors import DataError


def _record(server, body: dict[str, Any]) -> str:
    """Write one feedback; the message the page shows."""
    from hf_adapt.serve.feedback import record_feedback

    try:
        entry = record_feedback(server, body)
    except HTTPException as err:
        return f"Not recorded: {err.detail}"
    return f"Recorded ({entry['feedback']}{', correction ' + str(entry['correction']) if 'correction' in entry else ''})."


def headline(server) -> str:
    """The card's test numbers, as the page shows them beside the model name and revision."""
    served = server.served
    path = served.directory / "eval_results.json"
    lines = [f"**{served.name}** (revision `{served.revision}`)"]
    if path.is_file():
        results = json.loads(path.read_text())
        numbers = {k: v for k, v in results.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if numbers:
            lines += ["", "| test metric | value |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in list(numbers.items())[:12]]
    return "\n".join(lines)


def build(server):
    import gradio as gr

    with gr.Blocks(title=f"hf-adapt: {server.served.name}") as page:
        gr.Markdown(headline(server))
        if server.served.kind == "classifier":
            _classifier(server, gr)
        else:
            _chat(server, gr)
    return page


def _classifier_inputs(server, gr) -> tuple[list[Any], Any]:
    """The input widgets for the model's kind, and how their values become one input."""
    info = server.served.model.data_info
    if info["kind"] == "image":
        upload = gr.File(label="Image (PNG, JPEG or DICOM)", type="binary", elem_id="image")
        return [upload], lambda data: bytes(data) if data else None
    from hf_adapt.table_features import row_columns, row_kinds

    columns, kinds = row_columns(info), row_kinds(info)
    if not columns:  # a text model
        return [gr.Textbox(label="Text", lines=4, elem_id="text")], lambda text: text
    boxes = [gr.Textbox(label=column, lines=4 if kinds.get(column) == "text" and column == info.get("input_column")
                        else 1, elem_id=f"column-{column}") for column in columns]

    def row(*values):
        return {column: (_number(value) if kinds.get(column) == "number" else value)
                for column, value in zip(columns, values)}

    return boxes, row


def _number(value: str) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value  # the input check names the column and what it expected
    return int(number) if number.is_integer() else number


def _classifier(server, gr) -> None:
    from hf_adapt.inputs import check_inputs
    from hf_adapt.serve.classifier import as_logged, keep_answers, run_batch

    widgets, to_input = _classifier_inputs(server, gr)
    predict_button = gr.Button("Predict", variant="primary", elem_id="predict")
    label = gr.Label(label="Prediction", elem_id="prediction")
    answer_id = gr.Textbox(label="Answer id", interactive=False, elem_id="answer-id")
    with gr.Row():
        up = gr.Button("👍 Right", elem_id="thumbs-up")
        down = gr.Button("👎 Wrong", elem_id="thumbs-down")
    with gr.Row():
        if server.served.model.task.name == "regression":  # the right number, not a label
            correction = gr.Number(label=f"The right {server.served.model.labels[0]}", elem_id="correction")
        elif server.served.model.task.name == "multi_label":  # the right set of labels, possibly empty
            correction = gr.Dropdown(server.served.model.labels, multiselect=True, label="The right labels",
                                     elem_id="correction")
        else:
            correction = gr.Dropdown(server.served.model.labels, label="The right label", elem_id="correction")
        what = {"regression": "number", "multi_label": "labels"}.get(server.served.model.task.name, "label")
        correct = gr.Button(f"Send the right {what}", elem_id="send-correction")
    status = gr.Markdown(elem_id="status")
    explain_button = gr.Button("Explain", elem_id="explain")
    explanation = gr.JSON(label="Explanation")

    def predict(*values):
        item = to_input(*values)
        if item is None:
            return None, "", "Give an input first."
        served = server.served
        try:
            (checked,) = check_inputs([item], served.model.data_info)
        except DataError as err:
            return None, "", f"Not predicted: {err}"
        results = [(p, served) for p in run_batch(served.model, [(None, checked)])]
        answer = keep_answers(server, [as_logged(item)], results, None)["predictions"][0]
        if "value" in answer:  # a regression model: its number, shown as the label
            return {f"{served.model.labels[0]} = {answer['value']:.6g}": 1.0}, answer["prediction_id"], ""
        if "labels" in answer:  # multi-label: each label's probability; those at their thresholds are predicted
            decided = ", ".join(answer["labels"]) or "none"
            return answer["probabilities"], answer["prediction_id"], f"Predicted labels: {decided}"
        return answer["probabilities"], answer["prediction_id"], ""

    def explain(*values):
        from hf_adapt.serve.classifier import explain_one

        item = to_input(*values)
        try:
            (checked,) = check_inputs([item], server.served.model.data_info)
        except DataError as err:
            return {"error": str(err)}
        return explain_one(server.served.model, checked, None, 20, False)

    predict_button.click(predict, widgets, [label, answer_id, status])
    up.click(lambda i: _record(server, {"id": i, "feedback": "up", "metadata": {"via": "ui"}}), answer_id, status)
    down.click(lambda i: _record(server, {"id": i, "feedback": "down", "metadata": {"via": "ui"}}), answer_id, status)
    correct.click(lambda i, c: _record(server, {"id": i, "correction": c, "metadata": {"via": "ui"}}),
                  [answer_id, correction], status)
    explain_button.click(explain, widgets, explanation)


def _chat(server, gr) -> None:
    from hf_adapt.serve.answers import new_id

    chatbot = gr.Chatbot(label="Chat", elem_id="chat")
    ids = gr.State([])  # the answer id of each assistant message, in order
    message = gr.Textbox(label="Message", elem_id="message")
    status = gr.Markdown(elem_id="status")

    def respond(text: str, history: list[dict[str, Any]], answer_ids: list[str]):
        served = server.served
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        messages.append({"role": "user", "content": text})
        try:
            prompt = served.model.prompt_text(messages) if served.model.chat else text
        except DataError as err:
            return "", history, answer_ids, str(err)
        reply, *_ = served.model.generate(prompt, server.config.max_new_tokens, temperature=0.0)
        answer_id = new_id("chatcmpl")
        output = [{"role": "assistant", "content": reply}] if served.model.chat else reply
        server.store.add([{"id": answer_id, "kind": "completion", "model": served.name,
                           "model_revision": served.revision, "input": messages if served.model.chat else text,
                           "output": output}])
        history = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return "", history, [*answer_ids, answer_id], ""

    def liked(answer_ids: list[str], data: gr.LikeData):
        index = data.index[0] if isinstance(data.index, list | tuple) else data.index
        answer = index // 2  # user, assistant, user, assistant, ...
        if not 0 <= answer < len(answer_ids):
            return "That message has no answer id."
        return _record(server, {"id": answer_ids[answer], "feedback": "up" if data.liked else "down",
                                "metadata": {"via": "ui"}})

    liked.__annotations__["data"] = gr.LikeData  # gradio finds the event data by this annotation, as an object
    message.submit(respond, [message, chatbot, ids], [message, chatbot, ids, status])
    chatbot.like(liked, ids, status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # gradio's structured content: [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def mount(app, server) -> bool:
    """Mount the page at ``/ui`` if gradio is installed; False (and a log line) if not."""
    import importlib.util
    import logging

    if importlib.util.find_spec("gradio") is None:
        logging.getLogger("hf_adapt.serve").warning("no /ui page: gradio is not installed (pip install 'hf-adapt[serve]')")
        return False
    import gradio as gr

    gr.mount_gradio_app(app, build(server), path="/ui")
    return True
