"""Checkpoints in and out, each conversion streamed tensor by tensor and checkable (--check) by
comparing the converted model's logits with the source's:

  coh convert llama META_DIR OUT         Meta LLaMA (consolidated.*.pth, params.json, tokenizer.model) -> HF
  coh convert easylm STREAM OUT          EasyLM / original-CoH streaming_params (LLaMA, GPT-J) -> HF
  coh convert to-easylm HF_DIR OUT       HF LLaMA / GPT-J -> OUT/streaming_params for EasyLM's JAX code
  coh convert lora-merge ADAPTER OUT     a peft LoRA adapter merged into its base model
  coh convert sharded CKPT OUT           a sharded (torch.distributed.checkpoint) training checkpoint -> HF

The check runs both models in float32 on a CoH prompt and on a prompt holding every token id of a
sampled subset of the vocabulary, the source side computed apart from the converter, and passes when
max |logit difference| <= tolerance x max(1, max |source logit|) (default tolerance 1e-4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coh.convert.config import (
    ConvertConfig,
    EasyLMConvertConfig,
    LoraMergeConfig,
    MetaLlamaConvertConfig,
    ShardedConvertConfig,
    ToEasyLMConvertConfig,
)
from coh.options import add_options


def _report_check(prompts, source_logits, converted_logits, config: ConvertConfig) -> int:
    """Compare ``source_logits(ids)`` with ``converted_logits(ids)`` on every prompt; print the verdict."""
    from coh.convert.check import combine, compare_logits

    results = [compare_logits(source_logits(ids), converted_logits(ids), config.tolerance) for ids in prompts]
    result = combine(results, len(set(int(i) for ids in prompts for i in ids)))
    print(result.describe())
    return 0 if result.ok else 1


def _hf_logits(model_dir: str | Path):
    """``ids -> logits`` of the HF model in ``model_dir``, loaded once in float32."""
    from coh.convert.check import load_float32, model_logits

    model = load_float32(model_dir)
    return lambda ids: model_logits(model, ids)


def _prompts_for(model_dir: str | Path):
    from transformers import AutoConfig

    from coh.convert.check import check_prompts

    config = AutoConfig.from_pretrained(str(model_dir))
    return check_prompts(model_dir, config.vocab_size, getattr(config, "max_position_embeddings", None))


def _run_llama(config: MetaLlamaConvertConfig) -> int:
    from coh.convert.meta_llama import MetaCheckpoint, convert_meta_llama
    from coh.convert.reference import llama_logits

    out = convert_meta_llama(config.meta_dir, config.output_dir, tokenizer=config.tokenizer, dtype=config.dtype,
                             max_shard_size=config.max_shard_size, max_positions=config.max_position_embeddings,
                             coh_phrases=config.coh_phrases, progress=config.progress_bars)
    print(f"HF model written to {out}")
    if not config.check:
        return 0
    ckpt = MetaCheckpoint(config.meta_dir)
    return _report_check(_prompts_for(out), lambda ids: llama_logits(ckpt.get, ckpt.shape, ids), _hf_logits(out), config)


def _run_easylm(config: EasyLMConvertConfig) -> int:
    from coh.convert.easylm import convert_easylm

    source = convert_easylm(config.stream, config.output_dir, config=config.model_config, tokenizer=config.tokenizer,
                            dtype=config.dtype, max_shard_size=config.max_shard_size, coh_phrases=config.coh_phrases,
                            progress=config.progress_bars)
    print(f"HF {source.arch} model written to {config.output_dir}")
    if not config.check:
        return 0
    return _report_check(_prompts_for(config.output_dir), source.reference_logits, _hf_logits(config.output_dir), config)


def _run_to_easylm(config: ToEasyLMConvertConfig) -> int:
    from transformers import AutoConfig

    from coh.convert.easylm import export_easylm, read_back_for_check
    from coh.convert.easylm_targets import TARGETS, easylm_commands, target_problems

    stream = export_easylm(config.model_dir, config.output_dir, dtype=config.dtype, target=config.target,
                           progress=config.progress_bars)
    model_config = AutoConfig.from_pretrained(config.model_dir)
    arch = model_config.model_type
    print(f"EasyLM checkpoint written to {stream} (config for the json:: loaders: {stream.parent / 'easylm_config.json'})")
    commands = easylm_commands(model_config, arch, stream, stream.parent / "easylm_config.json", Path(config.model_dir))
    for target, problem in target_problems(model_config, arch).items():
        if config.target not in ("all", target):
            continue
        print(f"\n{TARGETS[target]}:")
        print(f"  cannot run this model: {problem}" if problem else f"  {commands[target]}")
    if not config.check:
        return 0
    # the written file, read as EasyLM's params:: loader hands it to its model, through the reference
    # forward; the HF folder (transformers) is the source
    stream_logits = read_back_for_check(stream, model_config)
    return _report_check(_prompts_for(config.model_dir), _hf_logits(config.model_dir), stream_logits, config)


def _run_lora(config: LoraMergeConfig) -> int:
    import torch

    from coh.convert.check import model_logits
    from coh.convert.lora import load_unmerged, merge_lora

    out = merge_lora(config.adapter_dir, config.output_dir, base=config.base, dtype=config.dtype,
                     max_shard_size=config.max_shard_size)
    print(f"merged model written to {out}")
    if not config.check:
        return 0
    unmerged, _ = load_unmerged(config.adapter_dir, config.base, torch.float32)
    return _report_check(_prompts_for(out), lambda ids: model_logits(unmerged, ids), _hf_logits(out), config)


def _run_sharded(config: ShardedConvertConfig) -> int:
    from coh.convert.check import model_logits
    from coh.convert.sharded import export_sharded_checkpoint, load_sharded_into_model

    out = export_sharded_checkpoint(config.checkpoint_dir, config.output_dir, config.max_shard_size,
                                    dtype=config.dtype, progress=config.progress_bars)
    print(f"HF model written to {out}")
    if not config.check:
        return 0
    source = load_sharded_into_model(config.checkpoint_dir)
    return _report_check(_prompts_for(out), lambda ids: model_logits(source, ids), _hf_logits(out), config)


# action -> (its config, its run, help, description)
ACTIONS = {
    "llama": (MetaLlamaConvertConfig, _run_llama, "Meta LLaMA checkpoint -> HF folder",
              "Meta's consolidated.NN.pth (any number of model-parallel shards) + params.json + tokenizer.model "
              "-> an HF LLaMA folder that coh train loads."),
    "easylm": (EasyLMConvertConfig, _run_easylm, "EasyLM / original-CoH streaming_params -> HF folder",
               "An EasyLM streaming checkpoint (streaming_params or streaming_train_state; LLaMA or GPT-J, the "
               "format of the authors' released CoH weights) -> HF folder. --config names the model's config "
               "here, as in EasyLM, so this action takes no YAML recipe."),
    "to-easylm": (ToEasyLMConvertConfig, _run_to_easylm, "HF LLaMA / GPT-J -> EasyLM streaming_params",
                  "An HF LLaMA or GPT-J folder -> OUTPUT_DIR/streaming_params and OUTPUT_DIR/easylm_config.json "
                  "(and tokenizer.model), for the original JAX code."),
    "lora-merge": (LoraMergeConfig, _run_lora, "LoRA adapter + base -> merged HF folder",
                   "A peft LoRA adapter folder merged into its base model with peft's merge_and_unload; "
                   "tokenizer and coh.json travel along."),
    "sharded": (ShardedConvertConfig, _run_sharded, "sharded training checkpoint -> consolidated HF safetensors",
                "CKPT/model_sharded/ (torch.distributed.checkpoint) + CKPT/config.json -> an HF folder, one "
                "shard-sized group of tensors in memory at a time."),
}


# action -> the option naming what it converts (the model card says where the folder came from)
SOURCES = {"llama": "meta_dir", "easylm": "stream", "to-easylm": "model_dir", "lora-merge": "adapter_dir",
           "sharded": "checkpoint_dir"}


def _with_card(action: str, run_action):
    """``run_action``, then the model card in its output folder and, with ``--push-to-hub``, the
    upload of that folder (only once the conversion, and its check when asked, succeeded)."""
    def run(config: ConvertConfig) -> int:
        from coh.card import write_convert_card
        from coh.hub import check_push_ready, push_folder

        if config.push_to_hub:
            check_push_ready(config.push_to_hub, config.hub_token_env)  # before the conversion, not after
        status = run_action(config)
        if status == 0:
            write_convert_card(config.output_dir, action, getattr(config, SOURCES[action]), config.push_to_hub)
            if config.push_to_hub:
                push_folder(config.output_dir, config.push_to_hub, private=config.hub_private,
                            token_env=config.hub_token_env)
        return status
    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    for name, (cls, run_action, summary, description) in ACTIONS.items():
        p = sub.add_parser(name, help=summary, description=description)
        # easylm's --config is the model's config (EasyLM's meaning, kept): no recipe flag there
        add_options(p, cls, recipe=cls is not EasyLMConvertConfig)
        p.set_defaults(func=_with_card(name, run_action))
