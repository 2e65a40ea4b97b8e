"""`coh train` end to end on tiny models built from config: resume, normalisation, modes, checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coh.cli import main
from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.records import FeedbackRecord, Segment
from coh.data.render import RenderSpec
from coh.eval.preference import pairs_from_records
from coh.train.config import TrainConfig
from coh.train.data import for_mode
from coh.train.packing import collate_packed
from coh.train.trainer import TrainingError, accumulate_gradients, train

from .conftest import config, train_and_crash, weights

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_resume_after_a_kill_gives_identical_weights(workspace, capsys):
    """N steps straight, and N/2 + kill + resume + N/2, with FCM, accumulation and the pretraining
    stream: the same weights, exactly (CPU, fp32)."""
    kw = dict(max_steps=6, save_every=3, gradient_accumulation_steps=2, fcm_min_ratio=0.0, fcm_max_ratio=0.2,
              pretrain_data=str(workspace / "pretrain.txt"), pretrain_lambda=0.5)
    train(config(workspace, "straight", **kw))
    with pytest.raises(RuntimeError, match="stopped after step 3"):
        train_and_crash(config(workspace, "resumed", **kw), after=3)
    assert [p.name for p in (workspace / "resumed").glob("checkpoint-*")] == ["checkpoint-3"]
    capsys.readouterr()
    train(config(workspace, "resumed", **kw))
    assert "resuming from checkpoint-3" in capsys.readouterr().out  # not a fresh run that happens to agree
    a, b = weights(workspace / "straight" / "final"), weights(workspace / "resumed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (workspace / "resumed" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s is not None]
    assert sorted(set(train_steps)) == list(range(1, 7))  # history continuous, nothing duplicated past the resume


def test_incomplete_checkpoint_is_ignored(workspace):
    out = workspace / "partial"
    train(config(workspace, "partial", max_steps=2, save_every=2))
    (out / "checkpoint-9").mkdir()  # a save that died before its COMPLETE marker
    cfg = config(workspace, "partial", max_steps=4, save_every=2)
    train(cfg)
    assert (out / "checkpoint-4" / "COMPLETE").exists()


def test_gradient_accumulation_does_not_change_the_gradient(workspace):
    """The loss is normalised by the target tokens of the whole step: one micro-batch of all
    records and the same records in three micro-batches give the same gradient."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    records = []
    for n in (30, 41, 25, 50, 33, 28):
        ids = torch.randint(0, 300, (n,), generator=g).tolist()
        records.append((ids, [0] * 10 + [1] * (n - 10)))
    targets = sum(sum(m[1:]) for _, m in records)
    cfg = config(workspace, "unused")
    accelerator = Accelerator()

    def grads(groups: list[list[int]]) -> list[torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(workspace / "llama", dtype=torch.float32)
        work = [(collate_packed([records[i] for i in grp]), "feedback", grp) for grp in groups]
        accumulate_gradients(model, work, cfg, 0, targets, 0, accelerator)
        return [p.grad.clone() for p in model.parameters()]

    one, three = grads([[0, 1, 2, 3, 4, 5]]), grads([[0, 1], [2, 3], [4, 5]])
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_short_run_learns(workspace):
    train(config(workspace, "learn", max_steps=30, eval_every=30, save_every=30, lr=5e-3, warmup_steps=3))
    history = [json.loads(line) for line in (workspace / "learn" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    final = next(h for h in reversed(history) if "eval/loss" in h)
    assert {"eval/token_accuracy", "eval/preference_accuracy", "eval/loss_dialogue"} <= set(final)
    assert (workspace / "learn" / "loss_curves.png").stat().st_size > 1000
    info = json.loads((workspace / "learn" / "final" / "coh.json").read_text())
    assert info["phrases"] == {"user": "User:", "good": "A helpful answer:", "bad": "An unhelpful answer:"}
    assert info["prompt_format"] == "coh"  # plain-text records: coh serve prompts in the CoH format


@pytest.mark.parametrize("mode", ["step", "ratio"])
def test_pretraining_regulariser_both_modes(workspace, mode):
    train(config(workspace, f"pt-{mode}", max_steps=2, pretrain_data=str(workspace / "pretrain.txt"),
                 pretrain_mode=mode, pretrain_ratio=0.5, gradient_accumulation_steps=2))
    history = [json.loads(line) for line in (workspace / f"pt-{mode}" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/pretrain_loss" in h for h in history)
    assert any("eval/pretrain_loss" in h for h in history)


def test_gptj_trains(workspace):
    result = train(config(workspace, "gptj", model=str(workspace / "gptj"), max_steps=2, fcm_max_ratio=0.1))
    assert result["eval/loss"] > 0 and (workspace / "gptj" / "final" / "model.safetensors").exists()


def test_modes_shape_the_records():
    pn = FeedbackRecord("d/1/pn", "dialogue", "pn", (
        Segment("User:", role="marker"), Segment(" Hi", role="user"),
        Segment(" A helpful answer:", role="feedback", label="good"),
        Segment(" Hello!", loss=True, role="assistant", eos=True, label="good"),
        Segment("An unhelpful answer:", role="feedback", label="bad"),
        Segment(" Go away.", loss=True, role="assistant", eos=True, label="bad"),
    ))
    np_ = FeedbackRecord("d/1/np", "dialogue", "np", (
        Segment("User:", role="marker"), Segment(" Hi", role="user"),
        Segment(" An unhelpful answer:", role="feedback", label="bad"),
        Segment(" Go away.", loss=True, role="assistant", eos=True, label="bad"),
        Segment("A helpful answer:", role="feedback", label="good"),
        Segment(" Hello!", loss=True, role="assistant", eos=True, label="good"),
    ))
    assert for_mode([pn, np_], "coh") == [pn, np_]
    (csft,) = for_mode([pn, np_], "conditional-sft")  # both give the same preferred record: kept once
    assert csft.text == "User: Hi A helpful answer: Hello!<eos>"
    (sft,) = for_mode([pn, np_], "sft")
    assert sft.text == "User: Hi Hello!<eos>" and [s.loss for s in sft.segments] == [False, False, True]
    chosen, rejected = pairs_from_records([pn])[0]
    assert chosen.text == "User: Hi A helpful answer: Hello!<eos>"
    assert rejected.text == "User: Hi A helpful answer: Go away.<eos>"


def test_problems_are_reported_before_any_compute(workspace, capsys):
    with pytest.raises(FileNotFoundError, match="no such records file"):
        train(config(workspace, "x", train_data=str(workspace / "nowhere")))
    with pytest.raises(TrainingError, match="no-model: no such folder"):
        train(config(workspace, "x", model=str(workspace / "no-model")))
    with pytest.raises(ValueError, match="flash_attention_2"):
        config(workspace, "x", fcm_max_ratio=0.1, attention="flash_attention_2")
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        config(workspace, "x", micro_batch_tokens=100)
    with pytest.raises(ValueError, match="longer than max_length 64 tokens"):
        train(config(workspace, "x", max_length=64, micro_batch_tokens=64, overlong="error"))
    no_loss = workspace / "no_loss.jsonl"
    no_loss.write_text(json.dumps({"id": "a", "source": "s", "feedback": "p",
                                   "segments": [{"text": "hello", "loss": False}]}) + "\n")
    with pytest.raises(ValueError, match="no loss tokens"):
        train(config(workspace, "x", train_data=str(no_loss)))
    assert main(["train", "nonsense_option=1"]) == 1
    assert "unknown option(s) ['nonsense_option']" in capsys.readouterr().err


def test_fresh_phrasing_every_epoch(workspace):
    """With a build made with --resample, each epoch draws new phrases and orders from the examples."""
    from coh.data.tokenize import RecordTokenizer
    from coh.train.data import TrainingEpochs
    from coh.train.setup import load_tokenizer

    raw = workspace / "hh.jsonl"
    build(BuildConfig([SourceSpec.parse(f"dialogue:{raw}")], str(workspace / "resampled"), skip_invalid=True,
                      render=RenderSpec(feedback=("pn", "np"), resample=True), progress=False))
    cfg = config(workspace, "resample-run", train_data=str(workspace / "resampled"), resample_each_epoch=True,
                 max_steps=None, epochs=2)
    epochs = TrainingEpochs(workspace / "resampled" / "train.jsonl", "coh", RecordTokenizer(load_tokenizer(cfg)),
                            cfg.micro_batch_tokens, cfg.max_length, "skip", 0, True)
    first, second = epochs.get(0)[0], epochs.get(1)[0]
    assert len(first) == len(second) and [r.text for r in first] != [r.text for r in second]
    assert {r.id.rsplit("/", 1)[1] for r in second} == {"e1"}
    train(cfg)  # two epochs through the loop
    assert (workspace / "resample-run" / "final" / "model.safetensors").exists()


def test_shipped_recipes_load():
    repo = Path(__file__).resolve().parents[2]
    for recipe in sorted((repo / "configs" / "train").glob("*.yaml")):
        cfg = TrainConfig.load(recipe, ["max_steps=1"])
        assert cfg.model and cfg.train_data, recipe


def test_lora_trains_adapters_only_resumes_exactly_and_merges(workspace):
    """LoRA through peft: checkpoints hold the adapter alone; a killed and resumed run ends with
    the adapter of a straight run; the merged model computes what base + adapter computes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kw = dict(lora_r=4, lora_alpha=8, lr=1e-2, max_steps=4, save_every=2, fcm_max_ratio=0.1)
    train(config(workspace, "lora", **kw))
    with pytest.raises(RuntimeError, match="stopped after step 2"):
        train_and_crash(config(workspace, "lora-resumed", **kw), after=2)
    train(config(workspace, "lora-resumed", **kw))
    final = workspace / "lora" / "final"
    assert (final / "adapter_model.safetensors").exists() and not (final / "model.safetensors").exists()
    assert not (workspace / "lora" / "checkpoint-4" / "model.safetensors").exists()
    a = load_file(final / "adapter_model.safetensors")
    b = load_file(workspace / "lora-resumed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_B" in k and a[k].abs().sum() > 0 for k in a)  # the adapters moved off their zero init

    base = AutoModelForCausalLM.from_pretrained(workspace / "llama")
    with_adapter = PeftModel.from_pretrained(base, final).eval()
    merged = AutoModelForCausalLM.from_pretrained(workspace / "lora" / "final-merged").eval()
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.allclose(with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(workspace / "llama")
    assert not torch.equal(merged.lm_head.weight, untouched.lm_head.weight) or any(
        not torch.equal(p, q) for p, q in zip(merged.parameters(), untouched.parameters()))


def test_lora_with_unknown_target_modules_is_refused(workspace):
    with pytest.raises(TrainingError, match="cannot add LoRA adapters"):
        train(config(workspace, "lora-bad", lora_r=4, lora_target_modules="no_such_proj"))


def test_lora_recipe_runs_on_a_tiny_model(workspace):
    """The single-GPU LoRA recipe as shipped (bf16, gradient checkpointing, all-linear adapters),
    with only the model, data and sizes swapped for the tiny ones."""
    repo = Path(__file__).resolve().parents[2]
    cfg = TrainConfig.load(repo / "configs" / "train" / "lora-1gpu.yaml", [
        f"model={workspace / 'llama'}", f"train_data={workspace / 'data'}", f"output_dir={workspace / 'lora-recipe'}",
        "max_steps=2", "gradient_accumulation_steps=1", "max_length=512", "micro_batch_tokens=1024",
        "report_to=[none]", "eval_every=2", "save_every=2"])
    assert (cfg.lora_r, cfg.dtype, cfg.gradient_checkpointing) == (16, "bfloat16", True)
    metrics = train(cfg)
    assert metrics["eval/loss"] > 0
    assert (workspace / "lora-recipe" / "final" / "adapter_config.json").exists()
    assert (workspace / "lora-recipe" / "final-merged" / "model.safetensors").exists()


def test_bfloat16_computes_under_autocast_with_fp32_weights(workspace):
    from transformers import AutoModelForCausalLM

    from coh.train.step import step_loss

    model = AutoModelForCausalLM.from_pretrained(workspace / "llama")
    batch = collate_packed([(list(range(5, 60)), [0] * 20 + [1] * 35)])
    full = step_loss(model, batch, config(workspace, "x")).loss_sum.item()
    half = step_loss(model, batch, config(workspace, "x", dtype="bfloat16")).loss_sum.item()
    assert half != full and half == pytest.approx(full, rel=2e-2)  # bf16 matmuls: close, not equal
    assert next(model.parameters()).dtype == torch.float32
