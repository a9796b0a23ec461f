"""The feedback recipe end to end on a tiny chat Llama: every TRL trainer with a LoRA adapter, the outputs
and card, reloading, windows, and bad input refused before anything trains."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.feedback import load_policy, load_reward_model
from hf_adapt.feedback.trainers import kto_weights
from hf_adapt.recipes.feedback import FeedbackConfig, main
from tests.feedback.conftest import product_feedback, write_log

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


class Plant:
    """A pickle that, when loaded, creates a file: proof that it ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _config(tmp_path, model, log, name="out", **overrides) -> FeedbackConfig:
    values = dict(model_name_or_path=str(model), feedback=str(log), output_dir=str(tmp_path / name), max_steps=3,
                  max_length=64, torch_num_threads=1, learning_rate=1e-3, adapter=LORA, logging_steps=1,
                  max_new_tokens=8)
    return FeedbackConfig(**{**values, **overrides})


def _changed_adapter_tensors(directory) -> list[str]:
    """Adapter tensors that moved from their init: LoRA's B starts at zero; a reward model's score head is saved."""
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    return [name for name, t in tensors.items() if ("lora_B" in name and t.abs().sum() > 0) or "score" in name]


@pytest.mark.parametrize("trainer, extra", [
    ("sft", {}),
    ("reward", {}),
    ("dpo", {"trainer_args": {"beta": 0.2}}),
    ("kto", {}),
    ("orpo", {}),
    ("grpo", {"reward_funcs": ["tests.feedback.rules:distinct_characters"]}),
])
def test_each_trainer_trains_its_adapter(trainer, extra, tiny_chat_llama, tmp_path):
    log = write_log(tmp_path / "chat.jsonl", product_feedback(range(10), conversational=True))
    result = main(_config(tmp_path, tiny_chat_llama, log, trainer=trainer, **extra))
    out = result.output_dir
    assert _changed_adapter_tensors(out), "no adapter parameter changed"
    assert not (out / "ref").exists()  # TRL's frozen reference copy is not part of the version
    info = json.loads((out / "hf_adapt.json").read_text())
    assert info["recipe"] == "feedback" and info["trainer"] == trainer and info["feedback"]["records"] == 70
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0 <= metrics["win_rate"] <= 1 and metrics["held_out_pairs"] > 0
    assert set(metrics) >= {"preference_accuracy", "preference_accuracy_before"}
    assert ("reward_margin" in metrics) == (trainer in ("dpo", "kto", "reward"))  # a beta, or a reward model's unit
    if trainer != "reward":
        assert metrics["kl_drift"] >= 0
    if trainer == "grpo":
        assert metrics["judge"] == "rule:tests.feedback.rules:distinct_characters" and metrics["judged_prompts"] == 2
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == ("text-classification" if trainer == "reward" else "text-generation")
    names = {m["name"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert names >= {"Win rate against the parent", "Held-out preference accuracy"}
    assert f"TRL `{trainer.upper()}`" in card.text and "Evaluation against the parent" in card.text
    if trainer == "dpo":
        assert "beta 0.2" in card.text
        reloaded, tokenizer, _ = load_policy(out)
        ids = tokenizer("How was product 3?", return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(reloaded(**ids).logits, result.model.eval()(**ids).logits)
    if trainer == "reward":
        reward_model, tokenizer = load_reward_model(out)
        with pytest.raises(ModelError, match="is a reward model"):
            load_policy(out)


def test_a_reward_model_from_the_feedback_judges_a_policy_round(tiny_chat_llama, tmp_path):
    log = write_log(tmp_path / "log.jsonl", product_feedback(range(10)))
    reward = main(_config(tmp_path, tiny_chat_llama, log, name="rm", trainer="reward", max_steps=5))
    judge = f"reward_model:{reward.output_dir}"
    policy = main(_config(tmp_path, tiny_chat_llama, log, name="policy", judge=judge, card_examples=2,
                          out_of_scope_use="Answers about medication.", dataset_id="org/bot-feedback"))
    metrics = policy.metrics
    assert metrics["judge"] == judge and metrics["judged_prompts"] == 2
    assert metrics["win_rate"] == metrics["judged_win_rate"] and "pair_win_rate" in metrics
    examples = json.loads((policy.output_dir / "feedback_results.json").read_text())["examples"]
    assert len(examples) == 2 and {"parent", "policy", "parent_score", "policy_score"} <= set(examples[0])
    card = (policy.output_dir / "README.md").read_text()
    assert "Judged examples" in card
    assert "## Out-of-scope use\n\nAnswers about medication." in card  # the card fields every recipe's card shows
    assert "org/bot-feedback" in card
    with pytest.raises(ModelError, match="is a dpo policy, not a reward model"):  # refused before training
        main(_config(tmp_path, tiny_chat_llama, log, name="never", judge=f"reward_model:{policy.output_dir}"))
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("conversational", [False, True])
def test_held_out_scoring_tokenizes_like_trl(conversational, tiny_chat_llama, tmp_path):
    """encode() gives the ids TRL's DPOTrainer trains on, also for a template that writes the bos token itself
    and a tokenizer that adds one (TRL tokenizes through the template: one bos, not two)."""
    from datasets import Dataset
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from hf_adapt.feedback.convert import to_dpo
    from hf_adapt.feedback.evaluate import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama)
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    pair = to_dpo(product_feedback(range(1), conversational=conversational)).rows[0]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", bf16=False, gradient_checkpointing=False,
                     max_length=64, use_cpu=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_chat_llama), args=args,
                         train_dataset=Dataset.from_list([pair]), processing_class=tokenizer)
    example = trainer.train_dataset[0]
    assert example["prompt_ids"].count(tokenizer.bos_token_id) == 1
    for side in ("chosen", "rejected"):
        ids, prompt_len = encode(tokenizer, pair["prompt"], pair[side], 64)
        assert ids == example["prompt_ids"] + example[f"{side}_ids"] and prompt_len == len(example["prompt_ids"])


def test_kto_weights_follow_the_class_balance(tiny_chat_llama, tmp_path):
    assert kto_weights({"desirable": 30, "undesirable": 10}, {}) == {"desirable_weight": 1.0, "undesirable_weight": 3.0}
    assert kto_weights({"desirable": 10, "undesirable": 25}, {}) == {"desirable_weight": 2.5, "undesirable_weight": 1.0}
    assert kto_weights({"desirable": 10, "undesirable": 25}, {"desirable_weight": 1.0}) == {}  # the user's win
    records = [r for r in product_feedback(range(10)) if r["feedback"] == "down" or r["user_id" if "user_id" in r
                                                                                      else "prompt"].endswith("-0")]
    log = write_log(tmp_path / "skewed.jsonl", records)
    result = main(_config(tmp_path, tiny_chat_llama, log, trainer="kto", max_steps=1))
    facts = json.loads((result.output_dir / "card_facts.json").read_text())
    counts = facts["conversion"]
    assert counts["undesirable"] > counts["desirable"]
    assert facts["trainer_args"]["desirable_weight"] == pytest.approx(counts["undesirable"] / counts["desirable"], 1e-3)
    assert facts["trainer_args"]["undesirable_weight"] == 1.0


def test_a_round_continues_a_served_version_on_the_feedback_since_it(tiny_chat_llama, tmp_path):
    v1 = main(_config(tmp_path, tiny_chat_llama, write_log(tmp_path / "week1.jsonl", product_feedback(range(10))),
                      name="v1"))
    log = write_log(tmp_path / "all.jsonl", product_feedback(range(10)) +
                    product_feedback(range(10, 20), day=20, revision="v2"))
    v2 = main(_config(tmp_path, "ignored-default", log, name="v2", model_name_or_path=FeedbackConfig.model_name_or_path,
                      init_from=str(v1.output_dir), feedback_since="parent", trainer="kto"))
    info = json.loads((v2.output_dir / "hf_adapt.json").read_text())
    assert info["model"]["name_or_path"] == str(tiny_chat_llama)  # the parent's base
    assert info["feedback"]["records"] == 70 and info["feedback"]["first"].startswith("2026-11-20")
    assert info["init_from"]["trainer"] == "dpo" and info["init_from"]["feedback_last"].startswith("2026-11-10")
    results = json.loads((v2.output_dir / "feedback_results.json").read_text())
    assert results["window"]["left_out"] == {"before the window": 70}
    parent = load_file(str(v1.output_dir / "adapter_model.safetensors"))
    child = load_file(str(v2.output_dir / "adapter_model.safetensors"))
    assert parent.keys() == child.keys() and any(not torch.equal(parent[k], child[k]) for k in parent)
    card = (v2.output_dir / "README.md").read_text()
    assert f"continued from `{v1.output_dir}`" in card and "the parent's adapter, trained further" in card
    assert "records after 2026-11-10" in card

    # refused before anything loads: a parent that would turn on remote code, a revision a folder cannot name,
    # feedback about the default model rather than the parent's base, and a pickled adapter
    untrusted = tmp_path / "untrusted"
    shutil.copytree(v1.output_dir, untrusted)
    info = json.loads((untrusted / "hf_adapt.json").read_text())
    (untrusted / "hf_adapt.json").write_text(json.dumps({**info, "model": {**info["model"], "trust_remote_code": True}}))
    with pytest.raises(ConfigError, match="runs code from its repo"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, log, name="v2d", init_from=str(untrusted)))
    with pytest.raises(ConfigError, match="is a local folder with none"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, log, name="v2e", init_from=str(v1.output_dir),
                     feedback_revisions=["parent"]))
    about_default = write_log(tmp_path / "default.jsonl", product_feedback(range(4), model=FeedbackConfig.model_name_or_path))
    with pytest.raises(DataError, match="records about another model: 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, about_default, name="v2f", init_from=str(v1.output_dir)))
    pickled = tmp_path / "pickled"
    shutil.copytree(v1.output_dir, pickled)
    (pickled / "adapter_model.safetensors").unlink()
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(Plant(tmp_path / "pwned")))
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, log, name="v2g", init_from=str(pickled)))
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        load_policy(pickled)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DataError, match="no feedback records in the window"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, tmp_path / "week1.jsonl", name="v2b",
                     init_from=str(v1.output_dir), feedback_since="parent"))
    with pytest.raises(ConfigError, match="trains a reward model"):
        main(_config(tmp_path, FeedbackConfig.model_name_or_path, log, name="v2c", init_from=str(v1.output_dir),
                     trainer="reward"))


def test_bad_feedback_is_refused_before_training(tiny_chat_llama, tiny_llama, tmp_path):
    def refused(error, match, log_records=None, raw=None, model=tiny_chat_llama, **overrides):
        path = tmp_path / "bad.jsonl"
        if raw is not None:
            path.write_bytes(raw)
        else:
            write_log(path, log_records)
        with pytest.raises(error, match=match):
            main(_config(tmp_path, model, path, name="never", **overrides))
        assert not (tmp_path / "never").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]

    records = product_feedback(range(6))
    refused(DataError, "holds no records", raw=b"")
    refused(DataError, "holds no records \\(2 bad records skipped\\)", raw=b"{oops\n[1, 2]\n", on_bad_record="skip")
    ups = [r for r in records if r["feedback"] == "up"]
    refused(DataError, "every thumb in the training window is up .*--allow_single_label true", ups, trainer="kto")
    refused(DataError, r"records about another model: 'org/other-bot' \(2 records, e.g. bad.jsonl:3\)",
            records[:2] + [{**r, "model": "org/other-bot"} for r in records[2:4]] + records[4:])
    lines = [json.dumps(r) for r in records]
    lines[2] = '{"prompt": "cut off'
    refused(DataError, r"bad.jsonl:3: not a JSON object", raw="\n".join(lines).encode())
    refused(ModelError, "are conversations .* has no chat template", product_feedback(range(6), conversational=True),
            model=tiny_llama)
    refused(DataError, "give no preference pairs", ups, trainer="kto", allow_single_label=True)  # opted in, but unscorable
    refused(ConfigError, "KTOConfig has no field\\(s\\) \\['bta'\\]", records, trainer="kto", trainer_args={"bta": 0.1})
    refused(ConfigError, "trainer_args sets \\['learning_rate'\\]", records, trainer_args={"learning_rate": 0.1})
    refused(ConfigError, "cannot import 'tests.feedback.rules:nope'", records, trainer="grpo",
            reward_funcs=["tests.feedback.rules:nope"])

    # a malformed line skipped on request is counted and reported, never dropped silently
    path = tmp_path / "skip.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = main(_config(tmp_path, tiny_chat_llama, path, name="skipped", on_bad_record="skip", max_steps=1))
    results = json.loads((result.output_dir / "feedback_results.json").read_text())
    assert results["bad_records"] == [f"{path}:3: not a JSON object (JSONDecodeError: Unterminated string starting "
                                      "at: line 1 column 12 (char 11))"]
    assert "1 malformed records skipped" in (result.output_dir / "README.md").read_text()


def test_cli_exits_2_with_the_reason(tiny_chat_llama, tmp_path):
    path = write_log(tmp_path / "ups.jsonl", [r for r in product_feedback(range(4)) if r["feedback"] == "up"])
    proc = subprocess.run([sys.executable, "-m", "hf_adapt.cli", "feedback", "train", "--model_name_or_path",
                           str(tiny_chat_llama), "--feedback", str(path), "--trainer", "kto", "--output_dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "hf-adapt feedback train: error: feedback" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_round_resumed_from_a_checkpoint_ends_where_the_uninterrupted_round_ends(tiny_chat_llama, tmp_path):
    """TRL checkpoints through the Trainer (checkpointing_steps -> save_steps, kept in <output_dir>.checkpoints);
    a round replayed from its step-2 checkpoint trains steps 3-4 to the same adapter."""
    log = write_log(tmp_path / "log.jsonl", product_feedback(range(10)))
    settings = dict(trainer="dpo", max_steps=4, checkpointing_steps=2, checkpoints_total_limit=2)
    whole = main(_config(tmp_path, tiny_chat_llama, log, name="round", **settings))
    root = tmp_path / "round.checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4"]
    expected = load_file(str(whole.output_dir / "adapter_model.safetensors"))
    resumed = main(_config(tmp_path, tiny_chat_llama, log, name="round", overwrite_output_dir=True,
                           resume_from_checkpoint=str(root / "checkpoint-2"), **settings))
    got = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    with pytest.raises(ConfigError, match=r"differs in \['max_steps'\]"):
        main(_config(tmp_path, tiny_chat_llama, log, name="round", overwrite_output_dir=True,
                     resume_from_checkpoint="latest", **{**settings, "max_steps": 6}))


def test_a_bf16_round_runs_on_one_cpu_process(tiny_chat_llama, tmp_path):
    """TRL refuses bf16 on a machine without an accelerator unless told it runs on CPU, one process included."""
    log = write_log(tmp_path / "chat.jsonl", product_feedback(range(10), conversational=True))
    result = main(_config(tmp_path, tiny_chat_llama, log, max_steps=2, mixed_precision="bf16"))
    assert (result.output_dir / "adapter_model.safetensors").is_file()
