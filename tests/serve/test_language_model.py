"""``hf-adapt serve`` for language models: OpenAI-compatible completions (plain and streamed) from a feedback
policy and a causal-LM pretrain output, driven with the ``openai`` client and raw HTTP, and feedback on answers."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.errors import ModelError  # noqa: E402
from hf_adapt.feedback import load_policy  # noqa: E402
from hf_adapt.feedback.convert import convert  # noqa: E402
from hf_adapt.feedback.log import read_feedback  # noqa: E402
from hf_adapt.recipes.feedback import FeedbackConfig  # noqa: E402
from hf_adapt.recipes.feedback import main as feedback_main  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.feedback.conftest import product_feedback, write_log  # noqa: E402
from tests.serve.helpers import call, running  # noqa: E402

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


@pytest.fixture(scope="module")
def policy_output(tiny_chat_llama, tmp_path_factory):
    """An SFT round on the tiny chat Llama: a feedback policy whose tokenizer has a chat template."""
    root = tmp_path_factory.mktemp("serve_policy")
    log = write_log(root / "chat.jsonl", product_feedback(range(6), conversational=True))
    cfg = FeedbackConfig(model_name_or_path=str(tiny_chat_llama), feedback=str(log), output_dir=str(root / "out"),
                         trainer="sft", max_steps=2, max_length=64, torch_num_threads=1, learning_rate=1e-3,
                         adapter=LORA, logging_steps=1, max_new_tokens=8)
    return feedback_main(cfg).output_dir


@pytest.fixture(scope="module")
def served_policy(policy_output):
    return load_served(str(policy_output), None, False, "cpu")


def _server(served, tmp_path, **values) -> Server:
    cfg = ServeConfig(model=str(served.directory), feedback_log=str(tmp_path / "served.jsonl"), **values)
    return Server(cfg, served)


def _greedy(served, messages, max_tokens: int) -> str:
    """What the policy says, greedily, through the library's own loader: the reference the server must match."""
    import torch

    model, tokenizer, _ = load_policy(served.directory, merge=True)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_openai_client_chats_and_streams(served_policy, tmp_path):
    openai = pytest.importorskip("openai")
    messages = [{"role": "user", "content": "How was product 3?"}]
    expected = _greedy(served_policy, messages, 6)
    with running(create_app(_server(served_policy, tmp_path))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="served", messages=messages, max_tokens=6, temperature=0)
        chunks = list(client.chat.completions.create(model="served", messages=messages, max_tokens=6, temperature=0,
                                                     stream=True))
    assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
    assert answer.system_fingerprint == served_policy.revision and answer.id.startswith("chatcmpl-")
    assert answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == expected
    assert len({c.id for c in chunks}) == 1 and chunks[-1].choices[0].finish_reason == "stop"
    kept = [json.loads(line) for line in (tmp_path / ".answers" / "served.jsonl").read_text().splitlines()]
    assert [a["id"] for a in kept] == [answer.id, chunks[0].id]
    assert kept[1]["output"] == [{"role": "assistant", "content": expected}] and kept[1]["input"] == messages


def test_feedback_on_answers_trains_the_next_round(served_policy, tmp_path):
    messages = [{"role": "user", "content": "How was product 1?"}]
    with running(create_app(_server(served_policy, tmp_path))) as url:
        ids = []
        for seed in (1, 2):
            status, body, _ = call(f"{url}/v1/chat/completions", {"messages": messages, "max_tokens": 5,
                                                                   "temperature": 1.0, "seed": seed})
            assert status == 200
            ids.append(body["id"])
        assert call(f"{url}/v1/feedback", {"id": ids[0], "feedback": "up", "user_id": "u1"})[0] == 201
        assert call(f"{url}/v1/feedback", {"id": ids[1], "correction": "lovely flavour and fresh"})[0] == 201
        pair = call(f"{url}/v1/feedback", {"chosen_id": ids[0], "rejected_id": ids[1]})
        bad = [call(f"{url}/v1/chat/completions", body)[0] for body in (
            {"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]},
            {"messages": messages, "max_tokens": 10_000}, {"messages": messages, "n": 2}, {"prompt": 3})]
    records = read_feedback(tmp_path / "served.jsonl").records
    kinds = [r["feedback"] if isinstance(r["feedback"], str) else "pair" for r in records]
    if pair[0] == 422:  # the two sampled answers came out the same: no pair to prefer
        assert "same completion" in pair[1]["detail"] and kinds == ["up", "down"]
    else:
        assert pair[0] == 201 and kinds == ["up", "down", "pair"]
    assert records[1]["correction"] == [{"role": "assistant", "content": "lovely flavour and fresh"}]
    assert all(r["prompt"] == messages and r["model_revision"] == served_policy.revision for r in records)
    assert convert(records, "sft").used >= 1  # the feedback recipe's SFT converter takes them as they are
    assert bad == [422, 422, 422, 422, 422]


def test_a_causal_lm_without_chat_template_completes_text(tiny_llama, review_texts, tmp_path):
    from hf_adapt.recipes.pretrain import PretrainConfig
    from hf_adapt.recipes.pretrain import main as pretrain_main

    data = tmp_path / "reviews.txt"
    data.write_text("\n".join(review_texts) + "\n")
    out = pretrain_main(PretrainConfig(model_name_or_path=str(tiny_llama), data=str(data), output_dir=str(tmp_path / "lm"),
                                       num_train_epochs=1, max_length=64, report_to="none", torch_num_threads=1,
                                       license="apache-2.0")).output_dir
    served = load_served(str(out), None, False, "cpu")
    with running(create_app(_server(served, tmp_path))) as url:
        status, body, _ = call(f"{url}/v1/completions", {"prompt": "great taste", "max_tokens": 4, "temperature": 0})
        chat = call(f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(f"{url}/v1/completions", method="POST", headers={"content-type": "application/json"},
                                         data=json.dumps({"prompt": "great taste", "max_tokens": 4, "temperature": 0,
                                                          "stream": True}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            events = response.read().decode().split("\n\n")
    assert status == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert chat[0] == 422 and "chat template" in chat[1]["detail"] and "/v1/completions" in chat[1]["detail"]
    assert events[-2] == "data: [DONE]"
    pieces = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-2]]
    assert "".join(pieces) == body["choices"][0]["text"]


def test_what_cannot_generate_is_refused_by_name(tiny_bert, review_texts, tmp_path):
    from hf_adapt.recipes.pretrain import PretrainConfig
    from hf_adapt.recipes.pretrain import main as pretrain_main

    data = tmp_path / "reviews.txt"
    data.write_text("\n".join(review_texts) + "\n")
    out = pretrain_main(PretrainConfig(model_name_or_path=str(tiny_bert), data=str(data), output_dir=str(tmp_path / "mlm"),
                                       max_steps=1, max_length=32, report_to="none", torch_num_threads=1)).output_dir
    with pytest.raises(ModelError, match="masked language model.*does not generate"):
        load_served(str(out), None, False, "cpu")
