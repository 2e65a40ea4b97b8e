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


def _common(p: argparse.ArgumentParser, shards: bool = True, dtype: bool = True, coh_phrases: bool = False) -> None:
    if coh_phrases:
        p.add_argument("--coh-phrases", action="store_true",
                       help="write coh.json with the original CoH phrases (for weights trained by the CoH code)")
    if dtype:
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                       help="dtype of the written weights (default: the source's)")
    if shards:
        p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    p.add_argument("--check", action="store_true",
                   help="compare the converted model's logits with the source's (float32; holds the converted "
                        "model in memory) and exit 1 if they differ beyond the tolerance")
    p.add_argument("--tolerance", type=float, default=None, help="check tolerance, relative to max(1, max |logit|) "
                                                                 "(default 1e-4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _subcommand(sub, name: str, run, help: str, description: str, source: tuple[str, str],
                output_help: str = "new folder for the HF model") -> argparse.ArgumentParser:
    """One ``coh convert`` action: SOURCE and OUTPUT_DIR positionals, dispatched to ``run``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument(source[0], help=source[1])
    p.add_argument("output_dir", help=output_help)
    p.set_defaults(convert_func=run)
    return p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    p = _subcommand(sub, "llama", _run_llama, "Meta LLaMA checkpoint -> HF folder",
                    "Meta's consolidated.NN.pth (any number of model-parallel shards) + params.json + "
                    "tokenizer.model -> an HF LLaMA folder that coh train loads.",
                    ("meta_dir", "folder with params.json, consolidated.NN.pth and (usually) tokenizer.model"))
    p.add_argument("--tokenizer", help="a SentencePiece tokenizer.model or an HF tokenizer folder "
                                       "(default: META_DIR/tokenizer.model)")
    p.add_argument("--max-position-embeddings", type=int, default=None,
                   help="context length for config.json (default: params.json's max_seq_len, else 2048)")
    _common(p, coh_phrases=True)

    p = _subcommand(sub, "easylm", _run_easylm, "EasyLM / original-CoH streaming_params -> HF folder",
                    "An EasyLM streaming checkpoint (streaming_params or streaming_train_state; LLaMA or GPT-J, "
                    "the format of the authors' released CoH weights) -> HF folder.",
                    ("stream", "the streaming_params (or streaming_train_state) file"))
    p.add_argument("--config", help="model size (1b 3b 7b 13b 30b 65b for LLaMA, 6b for GPT-J; or EasyLM's "
                                    "--llama.base_model names: llama_7b llama2_7b llama3_8b ...), an EasyLM or HF "
                                    "config JSON, or a folder with config.json (default: the standard size whose "
                                    "shapes match)")
    p.add_argument("--tokenizer", help="LLaMA: a SentencePiece tokenizer.model; GPT-J: an HF tokenizer folder")
    _common(p, coh_phrases=True)

    p = _subcommand(sub, "to-easylm", _run_to_easylm, "HF LLaMA / GPT-J -> EasyLM streaming_params",
                    "An HF LLaMA or GPT-J folder -> OUTPUT/streaming_params and OUTPUT/easylm_config.json "
                    "(and tokenizer.model), for the original JAX code.",
                    ("model_dir", "HF model folder (safetensors)"), "folder for streaming_params and easylm_config.json")
    p.add_argument("--target", choices=["all", "easylm", "coh"], default="all",
                   help="the code base that will load the files: easylm (EasyLM since May 2024, --llama.* flags, "
                        "LLaMA only), coh (the original CoH code and older EasyLM, json:: configs; no GQA, no "
                        "rope_theta); all (default) prints the command for every one that can run the model. "
                        "A named target that cannot run the model is refused before anything is written")
    _common(p, shards=False)

    p = _subcommand(sub, "lora-merge", _run_lora, "LoRA adapter + base -> merged HF folder",
                    "A peft LoRA adapter folder merged into its base model with peft's merge_and_unload; "
                    "tokenizer and coh.json travel along.",
                    ("adapter_dir", "peft adapter folder (adapter_config.json, adapter_model.safetensors)"))
    p.add_argument("--base", help="base model path or hub id (default: the adapter's base_model_name_or_path)")
    _common(p)

    p = _subcommand(sub, "sharded", _run_sharded, "sharded training checkpoint -> consolidated HF safetensors",
                    "CKPT/model_sharded/ (torch.distributed.checkpoint) + CKPT/config.json -> an HF folder, "
                    "one shard-sized group of tensors in memory at a time.",
                    ("checkpoint_dir", "checkpoint folder holding model_sharded/ and config.json"))
    _common(p)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _report_check(prompts, source_logits, converted_logits, args: argparse.Namespace) -> int:
    """Compare ``source_logits(ids)`` with ``converted_logits(ids)`` on every prompt; print the verdict."""
    from coh.convert.check import TOLERANCE, combine, compare_logits

    results = [compare_logits(source_logits(ids), converted_logits(ids), args.tolerance or TOLERANCE)
               for ids in prompts]
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


def _run_llama(args: argparse.Namespace) -> int:
    from coh.convert.meta_llama import MetaCheckpoint, convert_meta_llama
    from coh.convert.reference import llama_logits

    out = convert_meta_llama(args.meta_dir, args.output_dir, tokenizer=args.tokenizer, dtype=args.dtype,
                             max_shard_size=args.max_shard_size, max_positions=args.max_position_embeddings,
                             coh_phrases=args.coh_phrases, progress=_progress(args))
    print(f"HF model written to {out}")
    if not args.check:
        return 0
    ckpt = MetaCheckpoint(args.meta_dir)
    return _report_check(_prompts_for(out), lambda ids: llama_logits(ckpt.get, ckpt.shape, ids), _hf_logits(out), args)


def _run_easylm(args: argparse.Namespace) -> int:
    from coh.convert.easylm import convert_easylm

    source = convert_easylm(args.stream, args.output_dir, config=args.config, tokenizer=args.tokenizer,
                            dtype=args.dtype, max_shard_size=args.max_shard_size, coh_phrases=args.coh_phrases,
                            progress=_progress(args))
    print(f"HF {source.arch} model written to {args.output_dir}")
    if not args.check:
        return 0
    return _report_check(_prompts_for(args.output_dir), source.reference_logits, _hf_logits(args.output_dir), args)


def _run_to_easylm(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from coh.convert.easylm import (
        TARGETS,
        easylm_commands,
        export_easylm,
        read_back_for_check,
        target_problems,
    )

    stream = export_easylm(args.model_dir, args.output_dir, dtype=args.dtype, target=args.target,
                           progress=_progress(args))
    config = AutoConfig.from_pretrained(args.model_dir)
    arch = config.model_type
    print(f"EasyLM checkpoint written to {stream} (config for the json:: loaders: {stream.parent / 'easylm_config.json'})")
    commands = easylm_commands(config, arch, stream, stream.parent / "easylm_config.json", Path(args.model_dir))
    for target, problem in target_problems(config, arch).items():
        if args.target not in ("all", target):
            continue
        print(f"\n{TARGETS[target]}:")
        print(f"  cannot run this model: {problem}" if problem else f"  {commands[target]}")
    if not args.check:
        return 0
    # the written file, read as EasyLM's params:: loader hands it to its model, through the reference
    # forward; the HF folder (transformers) is the source
    stream_logits = read_back_for_check(stream, config)
    return _report_check(_prompts_for(args.model_dir), _hf_logits(args.model_dir), stream_logits, args)


def _run_lora(args: argparse.Namespace) -> int:
    import torch

    from coh.convert.check import model_logits
    from coh.convert.lora import load_unmerged, merge_lora

    out = merge_lora(args.adapter_dir, args.output_dir, base=args.base, dtype=args.dtype,
                     max_shard_size=args.max_shard_size)
    print(f"merged model written to {out}")
    if not args.check:
        return 0
    unmerged, _ = load_unmerged(args.adapter_dir, args.base, torch.float32)
    return _report_check(_prompts_for(out), lambda ids: model_logits(unmerged, ids), _hf_logits(out), args)


def _run_sharded(args: argparse.Namespace) -> int:
    from coh.convert.check import model_logits
    from coh.convert.sharded import export_sharded_checkpoint, load_sharded_into_model

    out = export_sharded_checkpoint(args.checkpoint_dir, args.output_dir, args.max_shard_size,
                                    dtype=args.dtype, progress=_progress(args))
    print(f"HF model written to {out}")
    if not args.check:
        return 0
    source = load_sharded_into_model(args.checkpoint_dir)
    return _report_check(_prompts_for(out), lambda ids: model_logits(source, ids), _hf_logits(out), args)


def run(args: argparse.Namespace) -> int:
    return args.convert_func(args)
