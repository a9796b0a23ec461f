"""One prepared script for a GPU machine: LoRA and DPO throughput of hf-adapt against HF and TRL. Always exits 0.

What runs
---------
A Llama-architecture causal LM of ~1.04B parameters (the Llama-3.2-1B shape with a 32k vocabulary: hidden 2048,
16 layers, 32 heads, 8 key/value heads, MLP 8192, tied embeddings) is built from a config with random weights
(seed 0; throughput does not depend on the weights) and saved once, in bf16, with a word-level tokenizer (``w4``
... ``w31999``). Every contender loads that folder in float32 and trains LoRA r=16 (alpha 32, dropout 0) on all
seven linear projections of every block, under bf16 autocast (fp32 master weights, as ``mixed_precision: bf16``
gives), at sequence length 2048, batch 8, AdamW at 2e-4 with a linear decay and no warm-up, weight decay 0,
gradient clipping at 1.0, on the same random token blocks in the same order (tokens drawn independently from a
Zipf-Mandelbrot law over the vocabulary, seed 0: text-like frequencies, so the loss falls within a few steps and
the contenders' loss curves are worth comparing). The model is 1.04B parameters, counted with the tied embedding once.

LoRA contenders, one after another in this process (then FSDP in a subprocess):

- **plain PyTorch** (the reference): ``AutoModelForCausalLM`` + ``peft.get_peft_model``; the batches, ``autocast``,
  ``model(**batch).loss``, ``backward``, ``clip_grad_norm_``, ``AdamW``, ``LambdaLR``, ``zero_grad``.
- **hf-adapt**: the path ``hf-adapt pretrain`` (objective clm, regime adapter) takes, through its public pieces:
  ``lm.build_lm`` -> the ``adapter`` regime -> ``lm.make_lm_loader`` with ``lm.train_collator`` ->
  ``lm.LanguageModelingTask`` -> ``hf_adapt.loop.fit`` under ``runtime.make_accelerator("bf16")``, settings as
  the recipe maps them, no held-out evaluation (the recipe's before/after perplexity and writing are not timed).
- **HF Trainer + peft**: ``Trainer`` on the same peft model, ``bf16=True``, its default optimizer (fused AdamW),
  ``train_sampling_strategy="sequential"`` over the batches in hf-adapt's order, ``default_data_collator``.
- **hf-adapt under FSDP**: the hf-adapt contender run by ``accelerate launch --config_file
  recipes/accelerate/fsdp.yaml --num_processes <GPUs>`` (FSDP2, bf16); each process takes its own batches.

The first ``warmup`` steps of each contender are not timed; the next ``steps`` are. A step is timed from the start
of its forward to the start of the next one (CUDA events on GPU, so there is no extra device sync; on CPU the host
clock), so data loading, the optimizer, the scheduler and each loop's bookkeeping are inside it.

- **tokens/s**: timed steps x batch x sequence length x processes / their time.
- **MFU**: tokens/s x FLOPs per token / the GPU's dense bf16 peak (``--peak_tflops`` overrides the lookup by
  ``torch.cuda.get_device_name``; H100 SXM and H200 989 TFLOPS). FLOPs per token count the work LoRA needs, with
  PaLM's attention term (Chowdhery et al. 2022, appendix B): ``4 N + 6 N_lora + 12 L d T`` where N is the
  parameters of the base's matrix multiplications (every linear layer, the tied output projection included, the
  embedding lookup not), 2N forward and 2N for the input gradients (a frozen weight needs no weight gradient),
  N_lora the adapter's parameters (forward and both gradients), L layers, d the attention width, T the sequence
  length (attention counted in full, not halved for the causal mask). The JSON also holds the 6N convention
  (``6 N + 12 L d T``, what full fine-tuning would do), which many LoRA reports quote: it reads 1.5x higher.
- **peak memory**: ``torch.cuda.max_memory_allocated`` from the contender's start (model load) to its end.

DPO, one round on the same pairs: ``hf-adapt feedback`` (``FeedbackConfig`` -> ``recipes.feedback.main``,
trainer dpo) against TRL's ``DPOTrainer`` called directly (model + ``peft_config``), with the same settings (LoRA as
above, beta 0.1, lr 5e-6, batch 8 pairs, max_length 512, bf16, gradient checkpointing off on both: TRL's own
default turns it on). The feedback log holds one pair per prompt (random words: a 128-word prompt, two 376-word
completions); the recipe holds out 10 % of the prompts to score the round, and TRL gets exactly the pairs the
recipe trains on. Pairs/s: steps x batch / TRL's ``train_runtime`` (the same trainer measures both sides,
first steps included); the round's wall time adds loading, TRL's tokenising and, for the recipe, scoring the
held-out pairs and writing the output.

Speed-option rows (section ``speed``, last, in ``speed_s`` of the budget): the hf-adapt row again with one option
of ``hf_adapt.speed`` on each, applied as the recipes apply them: ``tf32: true``, ``torch_compile: true`` (its
compiling falls in the warm-up steps) and ``liger_kernel: true`` (needs ``pip install liger-kernel``; the row says
so when it is missing). Their per-step losses are checked against the plain loop's like the other rows. They are
how ``docs/scale.md`` learns whether each option pays on a GPU; until this script has run on one, it says so.

Checks (PASS/FAIL lines under the table): every contender saw the same batches as the plain loop; its per-step
losses match the plain loop's within a tolerance (bf16: 0.5 % of the loss, 2 % for the FSDP row, whose FSDP2
bf16 parameters also put the residual stream in bf16; fp32 smoke: 1e-4); hf-adapt's tokens/s
is at least Trainer + peft's; hf-adapt's MFU is at least 40 %.

``--smoke`` runs the whole pipeline on CPU in float32 (the torch_compile row with dynamo's eager backend; the tf32
and Liger rows are refused there, as the recipes refuse them) with a 2-layer, 64-wide Llama (sequence 64, 2 + 3 steps, a
few DPO pairs) in well under a minute; there the FSDP row runs the same launch, which Accelerate runs without
FSDP on CPU, and says so. A per-section time guard stops a section that runs past its share of ``--budget_s``
(default 500 s from the model build on, so that with imports and the report the run stays under 10 minutes) and
reports what it measured.

Files: ``summary.md`` and ``results.json`` (date, hardware, library versions, every number) go to
``--output_dir`` (default ``benchmarks/results/gpu/<gpu|smoke>``; smoke is git-ignored); the model, the log and
the round outputs to ``--work_dir`` (default: a temporary folder, removed at the end).

Usage::

    python benchmarks/gpu.py                 # on a GPU machine: < 10 min on one H200
    python benchmarks/gpu.py --smoke         # CPU smoke run of every section
    python benchmarks/gpu.py --peak_tflops 989 --batch_size 4 --skip dpo,fsdp
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout  # noqa: E402

offline_checkout()

SEED = 0
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
MFU_TARGET = 0.40
SECTIONS = ("lora", "dpo", "fsdp", "speed")
# dense bf16 tensor-core peaks (NVIDIA datasheets, TFLOPS); the first name contained in the device name wins
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
               ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]


@dataclass
class Plan:
    """Sizes of one mode; every number here is printed with the results."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int
    warmup: int
    steps: int
    lr: float
    precision: str  # "bf16" (autocast, fp32 master weights) or "no" (fp32)
    loss_rtol: float  # per-step loss tolerance against the plain loop, relative
    fsdp_rtol: float  # the same for the FSDP row: FSDP2's bf16 parameters put the residual stream in bf16 too
    dpo_pairs: int
    dpo_prompt_words: int
    dpo_completion_words: int
    dpo_max_length: int
    dpo_batch: int
    dpo_lr: float = 5e-6
    dpo_eval_size: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    budget_s: float = 500.0
    # each section's share of the budget, in seconds (a section may not start past the budget, nor run past its share)
    contender_s: float = 90.0
    dpo_s: float = 150.0
    fsdp_s: float = 150.0
    speed_s: float = 150.0  # the speed-option rows together, last (each runs in a third of what is left)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + 1  # the last step only closes the last timed one


GPU = Plan(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000, seq=2048, batch=8, warmup=5,
           steps=20, lr=2e-4, precision="bf16", loss_rtol=5e-3, fsdp_rtol=2e-2, dpo_pairs=160, dpo_prompt_words=128,
           dpo_completion_words=376, dpo_max_length=512, dpo_batch=8)
SMOKE = Plan(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256, seq=64, batch=2, warmup=2,
             steps=3, lr=1e-3, precision="no", loss_rtol=1e-4, fsdp_rtol=1e-4, dpo_pairs=20, dpo_prompt_words=6,
             dpo_completion_words=10, dpo_max_length=24, dpo_batch=4, dpo_lr=1e-4, dpo_eval_size=0.2, budget_s=300.0,
             contender_s=60.0, dpo_s=120.0, fsdp_s=120.0, speed_s=90.0)


def lora_dict(plan: Plan) -> dict:
    return {"peft_type": "LORA", "r": plan.lora_r, "lora_alpha": plan.lora_alpha, "lora_dropout": 0.0,
            "target_modules": list(LORA_TARGETS)}


def lora_config(plan: Plan):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=plan.lora_r, lora_alpha=plan.lora_alpha, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS))


# ----------------------------------------------------------------------------- clocks, guards, memory


class TimeGuard(Exception):
    """A section ran past its share of the budget."""


class StepClock:
    """Marks the start of every training forward: CUDA events on a GPU (no device sync), the host clock on CPU.
    Past ``deadline`` (``time.time()``) the next mark raises :class:`TimeGuard`."""

    def __init__(self, cuda: bool, deadline: float):
        self.cuda, self.deadline = cuda, deadline
        self.marks: list = []
        self.fingerprints: list = []
        self.losses: list = []

    def mark(self, input_ids=None) -> None:
        if time.time() > self.deadline:
            raise TimeGuard(f"time guard: stopped after {len(self.marks)} steps")
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        if input_ids is not None:
            self.fingerprints.append(input_ids[:, :8].detach().clone())

    def seconds(self, first: int, last: int) -> float:
        """Time from mark ``first`` to mark ``last``."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return self.marks[first].elapsed_time(self.marks[last]) / 1000.0
        return self.marks[last] - self.marks[first]

    def summary(self, plan: Plan, processes: int = 1) -> dict:
        """Timed steps, seconds and tokens/s, the per-step losses and the batch fingerprints, as plain numbers."""
        timed = min(plan.steps, len(self.marks) - 1 - plan.warmup)
        out = {"steps_run": len(self.marks), "timed_steps": max(timed, 0),
               "losses": [float(x) for x in self.losses],
               "fingerprints": [f.cpu().tolist() for f in self.fingerprints]}
        if timed > 0:
            seconds = self.seconds(plan.warmup, plan.warmup + timed)
            out.update(seconds=seconds, tokens_per_s=timed * plan.batch * plan.seq * processes / seconds)
        return out


class Budget:
    """The run's deadline and each section's share of it."""

    def __init__(self, total_s: float):
        self.start = time.time()
        self.end = self.start + total_s

    def section(self, share_s: float) -> float:
        """The deadline of a section starting now; TimeGuard if the budget is already spent."""
        if time.time() >= self.end:
            raise TimeGuard(f"time guard: the {self.end - self.start:.0f} s budget was spent before this section")
        return min(self.end, time.time() + share_s)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def peak_memory(into: dict):
    """``into["peak_gib"]``: the most memory the block allocated on the GPU (None on CPU); frees what it left."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            into["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            into["peak_gib"] = None


def failure(err: Exception) -> str:
    """What a table cell says about a section that failed; the traceback goes to the log (not for the time guard)."""
    if isinstance(err, TimeGuard):
        return str(err)
    traceback.print_exc()
    return f"{type(err).__name__}: {err}"


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the model, the tokenizer, the data


def make_tokenizer(vocab: int):
    """A word-level tokenizer: ``<pad> <s> </s> <unk>`` then ``w4`` ... ``w{vocab-1}``, split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {token: i for i, token in enumerate(SPECIAL)}
    words.update({f"w{i}": i for i in range(len(SPECIAL), vocab)})
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def llama_config(plan: Plan):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=plan.vocab, hidden_size=plan.hidden, intermediate_size=plan.intermediate,
                       num_hidden_layers=plan.layers, num_attention_heads=plan.heads, num_key_value_heads=plan.kv_heads,
                       max_position_embeddings=max(plan.seq, plan.dpo_max_length), tie_word_embeddings=True,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build_model_folder(plan: Plan, folder: Path) -> dict:
    """The random Llama (seed 0) and its tokenizer saved to ``folder`` (bf16 on GPU, fp32 on CPU); its sizes."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(plan))
    params = sum(p.numel() for p in model.parameters())
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    model.to(torch.bfloat16 if plan.precision == "bf16" else torch.float32).save_pretrained(folder)
    make_tokenizer(plan.vocab).save_pretrained(folder)
    del model
    free_memory()
    return {"parameters": params, "matmul_parameters": matmul}


def make_blocks(plan: Plan, count: int) -> list[dict]:
    """``count`` blocks of ``plan.seq`` token ids drawn independently from a Zipf-Mandelbrot law over the vocabulary
    (rank k has weight 1 / (k + 2.7), ranks shuffled over the word ids; seed 0): text-like token frequencies that
    a model starts to learn within a few steps, so the losses of the contenders trace a curve worth comparing."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    words = plan.vocab - len(SPECIAL)
    weights = 1.0 / (torch.arange(words, dtype=torch.float64) + 2.7)
    ranks = torch.multinomial(weights, count * plan.seq, replacement=True, generator=generator)
    ids = torch.randperm(words, generator=generator)[ranks] + len(SPECIAL)
    return [{"input_ids": row} for row in ids.view(count, plan.seq).tolist()]


def hf_adapt_loader(plan: Plan, blocks: list[dict], tokenizer):
    """The training loader ``hf-adapt pretrain`` builds for packed causal-LM blocks."""
    from hf_adapt import lm

    return lm.make_lm_loader(blocks, lm.train_collator(tokenizer, "clm", 0.15), plan.batch, True, SEED)


def reference_batches(plan: Plan, blocks: list[dict], tokenizer) -> list[dict]:
    """The batches hf-adapt's loader yields, in its order, from a twin of it: what the other contenders get."""
    loader = hf_adapt_loader(plan, blocks, tokenizer)
    return [batch for _, batch in zip(range(plan.total_steps), loader)]


class Rows:
    """A dataset of the reference batches' rows, in order (Trainer's sequential sampler keeps it)."""

    def __init__(self, batches: list[dict]):
        self.rows = [{k: v[i] for k, v in batch.items()} for batch in batches for i in range(len(batch["input_ids"]))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def load_lm(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def seeded_peft(model, plan: Plan):
    from accelerate.utils import set_seed
    from peft import get_peft_model

    set_seed(SEED)  # every contender draws the same LoRA init
    return get_peft_model(model, lora_config(plan))


# ----------------------------------------------------------------------------- the LoRA contenders


def run_plain(plan: Plan, folder: Path, batches: list[dict], deadline: float) -> dict:
    """The hand-written reference loop."""
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    clock = StepClock(cuda, deadline)
    model = seeded_peft(load_lm(folder).to(device), plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.0)
    total = plan.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (total - step) / total))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.precision == "bf16")
    model.train()
    try:
        for batch in batches[:total]:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            clock.mark(batch["input_ids"])
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            clock.losses.append(loss.detach())
    except TimeGuard as err:
        return {**clock.summary(plan), "stopped": str(err)}
    return clock.summary(plan)


class TimedTask:
    """hf-adapt's task, with a clock mark at every training forward and the losses kept (no device sync)."""

    def __init__(self, inner, clock: StepClock):
        self.inner, self.clock = inner, clock

    def __call__(self, model, batch):
        if not model.training:
            return self.inner(model, batch)
        self.clock.mark(batch["input_ids"])
        out = self.inner(model, batch)
        self.clock.losses.append(out["loss"].detach())
        return out


def hf_adapt_settings(plan: Plan, total_steps: int):
    """``LoopSettings`` as ``hf_adapt.recipes.pretrain`` maps its config (metric: held-out loss)."""
    from hf_adapt.loop import LoopSettings

    return LoopSettings(num_train_epochs=1, max_steps=total_steps, learning_rate=plan.lr, weight_decay=0.0,
                        lr_scheduler_type="linear", warmup_ratio=0.0, max_grad_norm=1.0, metric_for_best_model="loss",
                        logging_steps=10)


def speed_options(**chosen):
    """The speed fields of a recipe config (``hf_adapt.speed.SpeedOptions``), off unless ``chosen``."""
    from types import SimpleNamespace

    return SimpleNamespace(**{"tf32": False, "torch_compile": False, "torch_compile_mode": "default",
                              "liger_kernel": False, **chosen})


def run_hf_adapt(plan: Plan, folder: Path, blocks: list[dict], deadline: float, precision: str | None = None,
                 options=None, accelerator_kwargs: dict | None = None) -> dict:
    """hf-adapt's path for LoRA continued pretraining of a causal LM (what ``hf-adapt pretrain`` wires), with the
    speed ``options`` applied as the recipe applies them (``accelerator_kwargs``: instead of theirs)."""
    import torch
    from accelerate.utils import set_seed

    from hf_adapt import lm, speed
    from hf_adapt.backbones import BackboneSpec
    from hf_adapt.loop import fit
    from hf_adapt.regimes import get_regime
    from hf_adapt.runtime import make_accelerator

    options = options or speed_options()
    speed.require_runtime(options)  # what the recipe refuses on this machine, the row refuses too
    speed.enable(options)
    kwargs = speed.accelerator_kwargs(options) if accelerator_kwargs is None else accelerator_kwargs
    accelerator = make_accelerator(plan.precision if precision is None else precision, 1, "none", **kwargs)
    backbone, objective = lm.build_lm(BackboneSpec(name_or_path=str(folder), num_labels=0, family="transformers",
                                                   max_length=plan.seq), "clm")
    speed.apply_liger(backbone.model, options)
    set_seed(SEED)  # every contender draws the same LoRA init
    regime = get_regime("adapter")
    model = regime.apply(backbone, lora_dict(plan))
    lm.train_new_parameters(model, backbone)
    loader = hf_adapt_loader(plan, blocks, backbone.preprocessor.tokenizer)
    clock = StepClock(torch.cuda.is_available(), deadline)
    task = TimedTask(lm.LanguageModelingTask(causal=objective == "clm"), clock)
    result = {"distributed_type": str(accelerator.distributed_type).split(".")[-1],
              "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision}
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm's bar: keep its cost, drop the clutter
            fit(accelerator, model, task, loader, None, hf_adapt_settings(plan, plan.total_steps))
    except TimeGuard as err:
        result["stopped"] = str(err)
    finally:
        accelerator.free_memory()
        if options.tf32:  # process-wide: the rows after this one run without it
            from transformers.utils import enable_tf32

            enable_tf32(False)
        torch._dynamo.reset()
    return {**clock.summary(plan, accelerator.num_processes), **result}


def run_trainer(plan: Plan, folder: Path, batches: list[dict], deadline: float, work: Path) -> dict:
    """HF ``Trainer`` on the same peft model and the same batches, in the same order."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    clock = StepClock(torch.cuda.is_available(), deadline)

    class TimedTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.mark(inputs["input_ids"])
            loss = super().training_step(model, inputs, num_items_in_batch)
            clock.losses.append(loss)
            return loss

    model = seeded_peft(load_lm(folder), plan)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=plan.batch, max_steps=plan.total_steps,
        learning_rate=plan.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=plan.precision == "bf16", seed=SEED, report_to="none", save_strategy="no", disable_tqdm=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = TimedTrainer(model=model, args=args, train_dataset=Rows(batches[:plan.total_steps]),
                           data_collator=default_data_collator)
    result = {"optimizer": str(args.optim)}
    try:
        trainer.train()
    except TimeGuard as err:
        result["stopped"] = str(err)
    finally:
        trainer.accelerator.free_memory()
    return {**clock.summary(plan), **result}


def run_fsdp(plan: Plan, folder: Path, work: Path, deadline: float, gpus: list[str]) -> dict:
    """The hf-adapt contender under ``accelerate launch --config_file recipes/accelerate/fsdp.yaml`` on ``gpus`` (one
    process each; one CPU process without them)."""
    (work / "plan.json").write_text(json.dumps({"plan": asdict(plan), "deadline": deadline}))
    for old in work.glob("fsdp_rank*.json"):
        old.unlink()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / "fsdp.yaml"), "--num_processes", str(len(gpus) or 1),
               "--mixed_precision", plan.precision, "--main_process_port", str(free_port()),
               str(Path(__file__).resolve()), "--fsdp_worker", "--work_dir", str(work)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    started = time.time()
    # its own process group: past the guard the launcher and every rank it started go, not only the launcher
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    try:
        output, _ = launch.communicate(timeout=max(10.0, deadline - started + 30))
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, 9)
        launch.communicate()
        return {"error": f"the launch ran past its time guard ({deadline - started:.0f} s) and was stopped"}
    ranks = sorted(work.glob("fsdp_rank*.json"))
    if launch.returncode or not ranks:
        print(output[-5000:], flush=True)
        tail = output.strip().splitlines()[-4:]
        return {"error": f"accelerate launch exited {launch.returncode}: " + " | ".join(tail)}
    results = [json.loads(p.read_text()) for p in ranks]
    main = results[0]
    if "traceback" in main:
        print(f"FSDP rank 0 failed:\n{main['traceback']}", flush=True)
    peaks = [r.get("peak_gib") for r in results if r.get("peak_gib") is not None]
    main["peak_gib"] = max(peaks) if peaks else None
    main["launch_seconds"] = time.time() - started
    return main


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp_worker(work: Path) -> None:
    """One rank of the FSDP launch: the hf-adapt contender on this rank's batches; its numbers to a JSON file."""
    import torch

    spec = json.loads((work / "plan.json").read_text())
    plan = Plan(**spec["plan"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    blocks = make_blocks(plan, plan.total_steps * plan.batch * world)
    memory: dict = {}
    try:
        with peak_memory(memory):
            # "no": the launcher's --mixed_precision (the plan's) decides, as in a recipe run
            result = run_hf_adapt(plan, work / "model", blocks, spec["deadline"], precision="no")
    except Exception as err:  # the main process reports it
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    (work / f"fsdp_rank{rank}.json").write_text(json.dumps({**result, **memory, "world": world}))


# ----------------------------------------------------------------------------- DPO


def write_pairs_log(plan: Plan, path: Path) -> int:
    """One pair record per prompt, random words (seed 0)."""
    import random

    rng = random.Random(SEED)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(len(SPECIAL), plan.vocab)}" for _ in range(n))

    records = [{"prompt": words(plan.dpo_prompt_words),
                "feedback": {"chosen": " " + words(plan.dpo_completion_words),
                             "rejected": " " + words(plan.dpo_completion_words)}}
               for _ in range(plan.dpo_pairs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return len(records)


def dpo_train_rows(plan: Plan, log: Path) -> list[dict]:
    """The rows the recipe trains on: its prompt split, its DPO conversion."""
    from hf_adapt.feedback.convert import convert
    from hf_adapt.feedback.log import read_feedback
    from hf_adapt.recipes.feedback import FeedbackConfig, split_prompts

    records = read_feedback(str(log)).records
    train, _ = split_prompts(records, plan.dpo_eval_size, FeedbackConfig.max_eval_prompts, SEED)
    return convert([records[i] for i in train], "dpo").rows


def dpo_steps(plan: Plan, rows: int) -> int:
    return max(1, rows // plan.dpo_batch)


def run_dpo_recipe(plan: Plan, folder: Path, log: Path, out: Path, steps: int, deadline: float) -> dict:
    from hf_adapt.recipes.feedback import FeedbackConfig
    from hf_adapt.recipes.feedback import main as feedback_main

    cfg = FeedbackConfig(
        model_name_or_path=str(folder), feedback=str(log), trainer="dpo", output_dir=str(out), overwrite_output_dir=True,
        max_length=plan.dpo_max_length, max_steps=steps, learning_rate=plan.dpo_lr,
        per_device_train_batch_size=plan.dpo_batch, per_device_eval_batch_size=plan.dpo_batch,
        mixed_precision=plan.precision, eval_size=plan.dpo_eval_size, seed=SEED, logging_steps=10, report_to="none",
        adapter=lora_dict(plan), trainer_args={"beta": 0.1},
        torch_num_threads=None if cuda_available() else 1)
    started = time.perf_counter()
    with deadline_sigterm(deadline):  # the recipe's own SIGTERM handling stops it at the next step
        feedback_main(cfg)
    wall = time.perf_counter() - started
    train = json.loads((out / "train_results.json").read_text())
    losses = [h["loss"] for h in train["log_history"] if "loss" in h]
    final = [h["train_loss"] for h in train["log_history"] if "train_loss" in h]
    return {"steps": train["steps"], "train_seconds": train["train_seconds"], "wall_seconds": wall,
            "train_loss": final[-1] if final else (losses[-1] if losses else None)}


def run_dpo_trl(plan: Plan, folder: Path, rows: list[dict], work: Path, steps: int, deadline: float) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    started = time.perf_counter()
    model = load_lm(folder)
    tokenizer = make_tokenizer(plan.vocab)
    args = DPOConfig(
        output_dir=str(work / "trl-dpo"), per_device_train_batch_size=plan.dpo_batch, max_steps=steps,
        learning_rate=plan.dpo_lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        seed=SEED, logging_steps=10, report_to="none", save_strategy="no", bf16=plan.precision == "bf16",
        gradient_checkpointing=False, max_length=plan.dpo_max_length, beta=0.1, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())
    from accelerate.utils import set_seed

    set_seed(SEED)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(plan), callbacks=[deadline_callback(deadline)])
    output = trainer.train()
    if trainer.state.global_step < steps:
        raise TimeGuard(f"time guard: stopped after {trainer.state.global_step} of {steps} steps")
    wall = time.perf_counter() - started
    result = {"steps": trainer.state.global_step, "train_seconds": output.metrics["train_runtime"],
              "wall_seconds": wall, "train_loss": output.training_loss}
    trainer.accelerator.free_memory()
    return result


@contextlib.contextmanager
def deadline_sigterm(deadline: float):
    """SIGTERM to this process at ``deadline``, under hf-adapt's handler: a recipe stops at its next optimiser step
    and raises ``Preempted`` (its output is not written)."""
    import signal
    import threading

    from hf_adapt import preemption

    timer = threading.Timer(max(0.0, deadline - time.time()), lambda: os.kill(os.getpid(), signal.SIGTERM))
    with preemption.handle_sigterm():
        timer.start()
        try:
            yield
        except preemption.Preempted as err:
            raise TimeGuard(f"time guard: {err}") from None
        finally:
            timer.cancel()


def deadline_callback(deadline: float):
    """A ``TrainerCallback`` that ends training at the first step past ``deadline``."""
    from transformers import TrainerCallback

    class Deadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if time.time() > deadline:
                control.should_training_stop = True
            return control

    return Deadline()


def dpo_section(plan: Plan, folder: Path, work: Path, deadline: float) -> dict[str, dict]:
    log = work / "feedback.jsonl"
    write_pairs_log(plan, log)
    rows = dpo_train_rows(plan, log)
    steps = dpo_steps(plan, len(rows))
    results: dict[str, dict] = {}
    for name, run in (("hf-adapt feedback", lambda: run_dpo_recipe(plan, folder, log, work / "feedback-out", steps, deadline)),
                      ("TRL DPOTrainer", lambda: run_dpo_trl(plan, folder, rows, work, steps, deadline))):
        memory: dict = {}
        try:
            if time.time() > deadline:
                raise TimeGuard("time guard: the DPO section's share of the budget was spent")
            with peak_memory(memory):
                r = run()
            r["pairs_per_s"] = r["steps"] * plan.dpo_batch / r["train_seconds"]
        except Exception as err:  # one failed side does not hide the other
            r = {"error": failure(err)}
        results[name] = {**r, **memory, "train_pairs": len(rows), "batch": plan.dpo_batch}
        free_memory()
    return results


# ----------------------------------------------------------------------------- FLOPs, checks, report


def flops_per_token(plan: Plan) -> dict[str, float]:
    """Model FLOPs per trained token: LoRA's (``4 N + 6 N_lora + 12 L d T``) and the 6N convention's."""
    head = plan.hidden // plan.heads
    q, kv = plan.heads * head, plan.kv_heads * head
    shapes = [(plan.hidden, q), (plan.hidden, kv), (plan.hidden, kv), (q, plan.hidden),
              (plan.hidden, plan.intermediate), (plan.hidden, plan.intermediate), (plan.intermediate, plan.hidden)]
    matmul = plan.layers * sum(a * b for a, b in shapes) + plan.vocab * plan.hidden  # + the (tied) output projection
    lora = plan.layers * sum(plan.lora_r * (a + b) for a, b in shapes)
    attention = 12 * plan.layers * q * plan.seq
    return {"matmul_parameters": matmul, "lora_parameters": lora, "attention": attention,
            "lora_flops": 4 * matmul + 6 * lora + attention, "six_n_flops": 6 * matmul + attention}


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    """The GPU's dense bf16 peak in TFLOPS and where the number comes from."""
    if override:
        return override, "--peak_tflops"
    import torch

    if not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops, f"table ({key})"
    return None, f"{name!r} is not in the table: pass --peak_tflops"


def add_mfu(result: dict, flops: dict, peak: float | None, processes: int = 1) -> None:
    if peak and result.get("tokens_per_s"):
        per_gpu = result["tokens_per_s"] / processes
        result["mfu"] = per_gpu * flops["lora_flops"] / (peak * 1e12)
        result["mfu_6n_convention"] = per_gpu * flops["six_n_flops"] / (peak * 1e12)


def loss_check(name: str, result: dict, reference: dict, rtol: float) -> tuple[str, bool | None]:
    """Per-step losses of ``result`` against the plain loop's, on the steps both ran."""
    ours, theirs = result.get("losses") or [], reference.get("losses") or []
    n = min(len(ours), len(theirs))
    if not n:
        return f"{name}: losses not compared (no steps from both)", None
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours[:n], theirs[:n]))
    ok = worst <= rtol
    return (f"{name}: per-step losses vs plain over {n} steps, largest relative difference {worst:.2e} "
            f"(tolerance {rtol:g}; mean {statistics.fmean(ours[:n]):.5f} vs {statistics.fmean(theirs[:n]):.5f})"), ok


def batch_check(name: str, result: dict, reference: dict) -> tuple[str, bool | None]:
    ours, theirs = result.get("fingerprints") or [], reference.get("fingerprints") or []
    n = min(len(ours), len(theirs))
    if not n:
        return f"{name}: batches not compared (no steps from both)", None
    same = ours[:n] == theirs[:n]
    return f"{name}: the same batches as plain, in the same order, over {n} steps", same


def checks(plan: Plan, lora: dict, fsdp: dict, smoke: bool) -> list[tuple[str, bool | None]]:
    """Every PASS/FAIL line: same data, same losses, the targets, FSDP really sharded."""
    plain = lora.get("plain PyTorch", {})
    out = []
    others = {k: v for k, v in lora.items() if k != "plain PyTorch"}
    if fsdp.get("world") == 1:
        others["hf-adapt FSDP"] = fsdp
    for name, result in others.items():
        if "losses" in result:
            out.append(batch_check(name, result, plain))
            out.append(loss_check(name, result, plain, plan.fsdp_rtol if name == "hf-adapt FSDP" else plan.loss_rtol))
    hf, trainer = lora.get("hf-adapt", {}), lora.get("HF Trainer + peft", {})
    note = " (smoke: CPU timing of a tiny model, not judged)" if smoke else ""
    if hf.get("tokens_per_s") and trainer.get("tokens_per_s"):
        ratio = hf["tokens_per_s"] / trainer["tokens_per_s"]
        out.append((f"target: hf-adapt tokens/s >= Trainer + peft's: {ratio:.3f}x{note}", None if smoke else ratio >= 1.0))
    else:
        out.append(("target: hf-adapt tokens/s >= Trainer + peft's: not measured", None))
    if hf.get("mfu") is not None:
        out.append((f"target: hf-adapt MFU >= {MFU_TARGET:.0%}: {hf['mfu']:.1%}{note}",
                    None if smoke else hf["mfu"] >= MFU_TARGET))
    else:
        out.append((f"target: hf-adapt MFU >= {MFU_TARGET:.0%}: not measured (no peak FLOPs: no GPU, or pass "
                    "--peak_tflops)", None))
    if fsdp and "error" not in fsdp and "skipped" not in fsdp:
        kind = fsdp.get("distributed_type")
        out.append((f"FSDP row ran under Accelerate distributed type {kind} on {fsdp.get('world')} process(es)"
                    + ("" if kind == "FSDP" else " (Accelerate runs FSDP on GPUs only)"),
                    None if smoke and kind != "FSDP" else kind == "FSDP"))
    return out


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[ok]


def fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{unit}"


def lora_row(name: str, how: str, r: dict, plain: dict) -> str:
    """A LoRA contender's row; the ratio is its tokens/s over the plain loop's."""
    if "tokens_per_s" not in r:
        why = r.get("error") or r.get("skipped") or r.get("stopped") or "no timed step"
        return f"| LoRA | {name} | {how} | {why} | | | | | |"
    ratio = r["tokens_per_s"] / plain["tokens_per_s"] if plain.get("tokens_per_s") else None
    loss = statistics.fmean(r["losses"]) if r.get("losses") else None
    stopped = f" ({r['stopped']})" if r.get("stopped") else ""
    return (f"| LoRA | {name} | {how} | {r['timed_steps']}{stopped} | {r['tokens_per_s']:,.0f} tokens/s | "
            f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('peak_gib'), '.1f', ' GiB')} | {fmt(loss, '.4f')} | "
            f"{fmt(ratio, '.3f', 'x')} |")


def dpo_row(name: str, how: str, r: dict, trl: dict) -> str:
    if "pairs_per_s" not in r:
        return f"| DPO | {name} | {how} | {r.get('error') or r.get('skipped')} | | | | | |"
    ratio = r["pairs_per_s"] / trl["pairs_per_s"] if trl.get("pairs_per_s") else None
    return (f"| DPO | {name} | {how} | {r['steps']} | {r['pairs_per_s']:,.2f} pairs/s (round {r['wall_seconds']:.0f} s) | "
            f"- | {fmt(r.get('peak_gib'), '.1f', ' GiB')} | {fmt(r.get('train_loss'), '.4f')} | "
            f"{fmt(ratio, '.3f', 'x')} |")


HOW = {
    "plain PyTorch": "from_pretrained + get_peft_model, autocast (bf16 runs), AdamW, LambdaLR",
    "hf-adapt": "`hf-adapt pretrain`'s path: lm.build_lm, adapter regime, lm loader, loop.fit",
    "HF Trainer + peft": "Trainer (bf16=True on bf16 runs) on the same peft model, sequential sampler",
    "hf-adapt FSDP": "the hf-adapt row under `accelerate launch --config_file recipes/accelerate/fsdp.yaml`",
    "hf-adapt feedback": "`hf-adapt feedback` (FeedbackConfig, trainer dpo)",
    "TRL DPOTrainer": "DPOTrainer(model, peft_config=LoraConfig) called directly",
    "hf-adapt + tf32": "the hf-adapt row with `tf32: true` (TF32 for what bf16 autocast leaves in float32)",
    "hf-adapt + torch_compile": "the hf-adapt row with `torch_compile: true` (inductor; compiling is in the warm-up)",
    "hf-adapt + liger_kernel": "the hf-adapt row with `liger_kernel: true` (Liger's RMSNorm, RoPE, SwiGLU kernels)",
}
SPEED_ROWS = {"hf-adapt + tf32": {"tf32": True}, "hf-adapt + torch_compile": {"torch_compile": True},
              "hf-adapt + liger_kernel": {"liger_kernel": True}}


def table(lora: dict, dpo: dict, fsdp: dict) -> list[str]:
    lines = ["| section | contender | how it runs | timed steps | throughput | MFU | peak memory | mean loss | "
             "vs reference |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    plain = lora.get("plain PyTorch", {})
    for name, r in lora.items():
        lines.append(lora_row(name, HOW[name], r, plain))
    if fsdp:
        world = fsdp.get("world")
        lines.append(lora_row("hf-adapt FSDP", HOW["hf-adapt FSDP"] + (f", {world} process(es), ran as "
                              f"{fsdp.get('distributed_type')}" if world else ""), fsdp, plain))
    trl = dpo.get("TRL DPOTrainer", {})
    for name, r in dpo.items():
        lines.append(dpo_row(name, HOW[name], r, trl))
    return lines


def hardware(gpus: list[str]) -> dict:
    """This process's GPU (the in-process contenders run on it) and how many the FSDP launch used."""
    import torch

    info = {"python": platform.python_version(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "fsdp_gpus": len(gpus)}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info.update(gpus=names, gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                    cuda=torch.version.cuda)
    else:
        info["gpus"] = []
    return info


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "accelerate": accelerate.__version__}


def report(mode: str, plan: Plan, facts: dict, lora: dict, dpo: dict, fsdp: dict, lines: list, meta: dict) -> str:
    hw = meta["hardware"]
    gpus = (f"{', '.join(hw['gpus'])} ({hw['gpu_memory_gib']:.0f} GiB, CUDA {hw['cuda']}; FSDP on {hw['fsdp_gpus']} "
            f"GPU(s)), {hw['cpu_cores']} CPU cores" if hw["gpus"] else f"no GPU ({hw['cpu_cores']} CPU cores)")
    flops = facts["flops"]
    out = [f"# GPU benchmark ({mode})", "",
           f"{meta['date']} on {gpus}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
           + f"; {meta['code']}", "",
           f"Model: random Llama, {facts['parameters'] / 1e6:,.1f}M parameters (hidden {plan.hidden}, {plan.layers} "
           f"layers, {plan.heads} heads / {plan.kv_heads} kv, MLP {plan.intermediate}, vocab {plan.vocab}, tied), "
           f"LoRA r={plan.lora_r} on {', '.join(LORA_TARGETS)} ({flops['lora_parameters']:,} parameters), "
           f"{'bf16 autocast over fp32 weights' if plan.precision == 'bf16' else 'fp32'}, sequence {plan.seq}, batch "
           f"{plan.batch}, {plan.warmup} warm-up + {plan.steps} timed steps per contender. MFU: "
           f"(4 N + 6 N_lora + 12 L d T) = {flops['lora_flops'] / 1e9:.3g} GFLOPs per token over "
           f"{fmt(meta['peak_tflops'], '.1f')} TFLOPS ({meta['peak_source']}); the 6N convention reads 1.5x higher "
           "(results.json).", "", *table(lora, dpo, fsdp), "",
           *[f"- {verdict(ok)}: {text}" for text, ok in lines], "",
           f"Total wall time {meta['wall_seconds']:.0f} s. Reproduce: `python benchmarks/gpu.py"
           f"{' --smoke' if mode == 'smoke' else ''}`.", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def lora_section(plan: Plan, folder: Path, work: Path, budget: Budget, skip: set[str]) -> dict[str, dict]:
    """The three in-process contenders, plain first (the reference), each in its own share of the budget."""
    tokenizer = make_tokenizer(plan.vocab)
    blocks = make_blocks(plan, plan.total_steps * plan.batch)
    batches = reference_batches(plan, blocks, tokenizer)
    runs = {"plain PyTorch": lambda d: run_plain(plan, folder, batches, d),
            "hf-adapt": lambda d: run_hf_adapt(plan, folder, blocks, d),
            "HF Trainer + peft": lambda d: run_trainer(plan, folder, batches, d, work)}
    results: dict[str, dict] = {}
    for name, run in runs.items():
        if "lora" in skip:
            results[name] = {"skipped": "--skip lora"}
            continue
        memory: dict = {}
        try:
            deadline = budget.section(plan.contender_s)
            with peak_memory(memory):
                r = run(deadline)
        except Exception as err:  # one failed contender does not hide the others
            r = {"error": failure(err)}
        results[name] = {**r, **memory}
        free_memory()
        print(f"[lora] {name}: " + (f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else
                                     str(r.get("error") or r.get("stopped"))), flush=True)
    return results


def speed_section(plan: Plan, folder: Path, budget: Budget, skip: set[str], smoke: bool) -> dict[str, dict]:
    """The hf-adapt row again with each speed option on, in a third each of the section's share. The smoke run
    compiles with dynamo's eager backend (the same wrapping, no minutes of inductor compiling on a CPU); on a
    machine that refuses an option (TF32 and Liger without a CUDA GPU) its row says so."""
    from hf_adapt.errors import ConfigError

    blocks = make_blocks(plan, plan.total_steps * plan.batch)
    results: dict[str, dict] = {}
    end = time.time() + plan.speed_s
    for name, chosen in SPEED_ROWS.items():
        if "speed" in skip:
            results[name] = {"skipped": "--skip speed"}
            continue
        kwargs = None
        if smoke and chosen.get("torch_compile"):
            from accelerate.utils import TorchDynamoPlugin

            kwargs = {"dynamo_plugin": TorchDynamoPlugin(backend="eager")}
        memory: dict = {}
        try:
            deadline = min(budget.section(plan.speed_s), time.time() + max(end - time.time(), 0) / 3)
            with peak_memory(memory):
                r = run_hf_adapt(plan, folder, blocks, deadline, options=speed_options(**chosen),
                                 accelerator_kwargs=kwargs)
        except ConfigError as err:
            r = {"skipped": f"refused here: {err}"}
        except Exception as err:
            r = {"error": failure(err)}
        results[name] = {**r, **memory}
        free_memory()
        print(f"[speed] {name}: " + (f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else
                                      str(r.get("error") or r.get("skipped") or r.get("stopped"))), flush=True)
    return results


def guarded(section: str, skip: set[str], budget: Budget, share: float, run) -> dict:
    if section in skip:
        return {"skipped": f"--skip {section}"}
    try:
        return run(budget.section(share))
    except Exception as err:
        return {"error": failure(err)}


def pin_one_gpu() -> list[str]:
    """The GPUs this machine shows, for the FSDP launch; this process keeps only the first, or ``Trainer`` and TRL
    would wrap the model in ``DataParallel`` over the others. Call before torch initialises CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                              capture_output=True, text=True, timeout=300)
        count = int(done.stdout.strip() or 0) if done.returncode == 0 else 0
        gpus = [str(i) for i in range(count)]
    else:
        gpus = [d.strip() for d in listed.split(",") if d.strip()]
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    return gpus


def run(args: argparse.Namespace) -> None:
    gpus = [] if args.smoke else pin_one_gpu()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    started = time.time()
    mode = "smoke" if args.smoke else "gpu"
    plan = SMOKE if args.smoke else GPU
    over = {k: v for k, v in (("batch", args.batch_size), ("steps", args.steps), ("warmup", args.warmup),
                              ("budget_s", args.budget_s), ("precision", args.precision),
                              ("loss_rtol", args.loss_rtol)) if v is not None}
    plan = replace(plan, **over)
    if args.smoke:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: the GPU mode needs one (use --smoke on CPU); running anyway", flush=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budget = Budget(plan.budget_s)
    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hf-adapt-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.output_dir or REPO / "benchmarks" / "results" / "gpu" / mode)
    try:
        folder = work / "model"
        facts = build_model_folder(plan, folder)
        facts["flops"] = flops_per_token(plan)
        print(f"model: {facts['parameters']:,} parameters in {folder} ({time.time() - started:.0f} s)", flush=True)
        lora = lora_section(plan, folder, work, budget, skip)
        dpo = guarded("dpo", skip, budget, plan.dpo_s, lambda d: dpo_section(plan, folder, work, d))
        if "skipped" in dpo or "error" in dpo:
            dpo = {"hf-adapt feedback": dpo, "TRL DPOTrainer": dpo}
        fsdp = guarded("fsdp", skip, budget, plan.fsdp_s, lambda d: run_fsdp(plan, folder, work, d, gpus))
        lora.update(speed_section(plan, folder, budget, skip, args.smoke))
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    peak, source = peak_tflops(args.peak_tflops)
    for r in lora.values():
        add_mfu(r, facts["flops"], peak)
    add_mfu(fsdp, facts["flops"], peak, fsdp.get("processes") or 1)
    lines = checks(plan, lora, fsdp, args.smoke)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "hardware": hardware(gpus), "versions": versions(), "code": code_version(), "peak_tflops": peak,
            "peak_source": source, "wall_seconds": time.time() - started}
    text = report(mode, plan, facts, lora, dpo, fsdp, lines, meta)
    print(text, flush=True)
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.md").write_text(text)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("fingerprints", "traceback")}  # noqa: E731
    (results / "results.json").write_text(json.dumps({
        "mode": mode, "plan": asdict(plan), **meta, "model": facts,
        "lora": {k: strip(v) for k, v in lora.items()}, "fsdp": strip(fsdp), "dpo": dpo,
        "checks": [{"check": text, "result": verdict(ok)} for text, ok in lines]}, indent=2, default=str) + "\n")
    print(f"wrote {results}/summary.md and results.json", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: a 2-layer, 64-wide Llama, fp32, few steps")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: lookup)")
    parser.add_argument("--batch_size", type=int, default=None, help="sequences per step (default: the mode's)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before them")
    parser.add_argument("--budget_s", type=float, default=None, help="the whole run's time guard in seconds")
    parser.add_argument("--precision", choices=["bf16", "no"], default=None,
                        help="bf16 autocast over fp32 weights, or fp32 (default: bf16 on GPU, fp32 in the smoke run)")
    parser.add_argument("--loss_rtol", type=float, default=None,
                        help="per-step loss tolerance relative to the plain loop's (default: the mode's)")
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip: {', '.join(SECTIONS)}")
    parser.add_argument("--output_dir", default=None, help="default benchmarks/results/gpu/<gpu|smoke>")
    parser.add_argument("--work_dir", default=None, help="model and round outputs (default: a temporary folder)")
    parser.add_argument("--fsdp_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fsdp_worker:
        fsdp_worker(Path(args.work_dir))
        return 0
    try:
        run(args)
    except Exception as err:  # a benchmark reports; it does not fail a build
        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
