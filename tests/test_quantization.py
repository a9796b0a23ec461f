"""QLoRA settings: refused when the config cannot mean anything (checked on any machine), and refused by name on a
machine that cannot load a bitsandbytes model, before anything trains."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError
from hf_adapt.quantization import describe
from hf_adapt.recipes.feedback import FeedbackConfig
from hf_adapt.recipes.finetune import FinetuneConfig, main
from hf_adapt.recipes.pretrain import PretrainConfig

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
       "bnb_4bit_use_double_quant": True}


@pytest.mark.parametrize("values, message", [
    ({"quantization": {"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"}}, r"unknown field\(s\) \['bnb_4bit_quant_typ'\]"),
    ({"quantization": {"bnb_4bit_quant_type": "nf4"}}, "exactly one of load_in_4bit"),
    ({"quantization": {"load_in_4bit": True, "load_in_8bit": True}}, "exactly one of load_in_4bit"),
    ({"quantization": NF4, "regime": "full"}, "regime 'full' would train or save the quantized weights"),
    ({"quantization": NF4, "family": "timm"}, "family 'timm' has no such path"),
    ({"quantization": NF4, "init_from": "outputs/parent"}, "quantization with init_from is not supported"),
    ({"quantization": "nf4"}, "quantization must be dict"),
])
def test_a_quantization_that_cannot_mean_anything_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(FinetuneConfig, values)


def test_each_recipe_that_trains_transformers_takes_it():
    assert config_from_dict(FinetuneConfig, {"quantization": NF4}).quantization == NF4
    assert config_from_dict(PretrainConfig, {"quantization": NF4, "data": "corpus.txt"}).quantization == NF4
    feedback = config_from_dict(FeedbackConfig, {"quantization": NF4, "feedback": "log.jsonl", "init_from": "v1"})
    assert feedback.quantization == NF4  # a feedback round continues its parent's adapter on the quantized base
    assert describe(NF4) == ("4-bit nf4, double quantization, compute in bfloat16 (bitsandbytes; QLoRA: the adapter "
                             "trained on the quantized base)")


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
                    reason="this machine can load bitsandbytes models")
def test_a_machine_without_a_gpu_refuses_before_training(tiny_bert, credit_sample, tmp_path):
    cfg = config_from_dict(FinetuneConfig, {"model_name_or_path": str(tiny_bert), "data": str(credit_sample),
                                            "quantization": NF4, "output_dir": str(tmp_path / "out"),
                                            "torch_num_threads": 1, "report_to": "none"})
    with pytest.raises(ConfigError, match="needs (bitsandbytes|a CUDA GPU)"):
        main(cfg)
    assert not (tmp_path / "out").exists()
