"""OpenAI-compatible routes for language models: ``POST /v1/chat/completions`` and ``POST /v1/completions``, plain
or streamed (server-sent events ending in ``data: [DONE]``), so the ``openai`` client and ``curl`` work unchanged.
Each answer's ``id`` is what ``POST /v1/feedback`` names; ``system_fingerprint`` is the served revision."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from hf_adapt.serve.answers import new_id

router = APIRouter()


def _settings(body: dict[str, Any], cap: int) -> dict[str, Any]:
    if body.get("n", 1) != 1:
        raise HTTPException(422, "n: this server gives one answer per request")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or cap
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= cap:
        raise HTTPException(422, f"max_tokens must be an integer in 1..{cap} (max_new_tokens), got {max_tokens!r}")
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise HTTPException(422, f"temperature must be in 0..2, got {temperature!r}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise HTTPException(422, f"top_p must be in (0, 1], got {top_p!r}")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise HTTPException(422, f"seed must be an integer, got {seed!r}")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p), "seed": seed}


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPException(422, "messages must be a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)):
            raise HTTPException(422, f"messages[{i}] must be {{role: system|user|assistant, content: text}}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server = request.app.state.server
    body = await _body(request)
    settings = _settings(body, server.config.max_new_tokens)
    messages = _messages(body)
    served = server.served  # this request's version to the end, whatever is swapped in meanwhile
    prompt = served.model.prompt_text(messages)
    return await _answer(server, served, "chat", messages, prompt, settings, bool(body.get("stream")))


@router.post("/v1/completions")
async def completions(request: Request):
    server = request.app.state.server
    body = await _body(request)
    settings = _settings(body, server.config.max_new_tokens)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise HTTPException(422, "prompt must be a non-empty string")
    return await _answer(server, server.served, "text", prompt, prompt, settings, bool(body.get("stream")))


async def _answer(server, served, style: str, given: Any, prompt: str, settings: dict[str, Any], stream: bool):
    answer_id = new_id("chatcmpl" if style == "chat" else "cmpl")
    head = {"id": answer_id, "created": int(time.time()), "model": served.name, "system_fingerprint": served.revision}

    def keep(text: str) -> None:
        output = [{"role": "assistant", "content": text}] if style == "chat" else text
        server.store.add([{"id": answer_id, "kind": "completion", "model": served.name,
                           "model_revision": served.revision, "input": given, "output": output}])

    if stream:
        return StreamingResponse(_events(served, style, head, prompt, settings, keep), media_type="text/event-stream")
    text, prompt_tokens, completion_tokens, finish = await run_in_threadpool(served.model.generate, prompt, **settings)
    keep(text)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if style == "chat"
              else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    kind = "chat.completion" if style == "chat" else "text_completion"
    return JSONResponse({**head, "object": kind, "choices": [choice], "usage": usage})


def _events(served, style: str, head: dict[str, Any], prompt: str, settings: dict[str, Any], keep) -> Iterator[str]:
    kind = "chat.completion.chunk" if style == "chat" else "text_completion"

    def chunk(piece: str | None, finish: str | None, first: bool = False) -> str:
        if style == "chat":
            delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**head, 'object': kind, 'choices': [choice]})}\n\n"

    pieces = []
    yield chunk("", None, first=True)
    for piece in served.model.stream(prompt, **settings):
        pieces.append(piece)
        yield chunk(piece, None)
    keep("".join(pieces))  # before the last event: a client that saw [DONE] can give feedback at once
    yield chunk(None, "stop")
    yield "data: [DONE]\n\n"
