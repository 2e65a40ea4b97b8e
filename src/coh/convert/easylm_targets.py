"""The code bases that load a written EasyLM checkpoint (``coh convert to-easylm --target``):
which of them can run a model as HF does, and the command line, with only the flags that
version reads, for each one that can.
"""

from __future__ import annotations

from pathlib import Path

from coh.convert.easylm_configs import EASYLM_STANDARD
from coh.convert.meta_llama import llama_shape_of

# The code bases that read these files, and what each reads. EasyLM's LLaMA config moved from a
# JSON file (--load_llama_config='json::...', LLaMAConfig.load_config) to --llama.* flags
# (LLaMAConfigurator) in b2e2a78 (May 2024), which also dropped GPT-J.
TARGETS = {
    "easylm": "EasyLM since b2e2a78 (May 2024; young-geng/EasyLM HEAD fe5b2c3): --llama.* flags, LLaMA only",
    "coh": "the original Chain-of-Hindsight code (lhao499/chain-of-hindsight 9f55cea) and EasyLM before b2e2a78: "
           "--load_llama_config / --load_gptj_config 'json::FILE'",
}


def target_problems(config, arch: str) -> dict[str, str | None]:
    """Per target code base: why it cannot run this model as HF does, or None when it can."""
    problems: dict[str, str | None] = {}
    if arch == "gptj":
        problems["easylm"] = "EasyLM dropped GPT-J in b2e2a78 (May 2024); use --target coh"
        problems["coh"] = None
        return problems
    shape = llama_shape_of(config)
    theta = None if shape.rope_theta == 10000.0 else (
        f"rope_theta {shape.rope_theta:g}: this code's rotary embedding always uses 10000")
    problems["easylm"] = theta and theta.replace(
        "this code's rotary embedding always uses 10000",
        "EasyLM's FlaxLLaMAAttention calls apply_rotary_emb without the config's rope_theta, so it runs 10000")
    gqa = None if shape.n_kv_heads == shape.n_heads else (
        f"{shape.n_kv_heads} KV heads for {shape.n_heads} attention heads (grouped-query attention): this "
        "LLaMAConfig has no num_key_value_heads")
    problems["coh"] = "; ".join(p for p in (gqa, theta) if p) or None
    return problems


def easylm_commands(config, arch: str, stream: Path, config_json: Path, model_dir: Path) -> dict[str, str]:
    """Per target code base that can run the model: the command line that loads the written files,
    with only the flags that version reads."""
    stream, config_json, model_dir = stream.resolve(), config_json.resolve(), model_dir.resolve()
    commands = {}
    problems = target_problems(config, arch)
    ckpt = f"--load_checkpoint='params::{stream}'"
    if arch == "llama" and problems["easylm"] is None:
        shape = llama_shape_of(config)
        dims = (config.hidden_size, config.intermediate_size, shape.n_layers, shape.n_heads, shape.n_kv_heads)
        base = next((name for name, d in EASYLM_STANDARD.items() if d[:5] == dims), "llama_7b")
        flags = [f"--llama.base_model={base}", f"--llama.vocab_size={config.vocab_size}",
                 f"--llama.hidden_size={config.hidden_size}", f"--llama.intermediate_size={config.intermediate_size}",
                 f"--llama.num_hidden_layers={shape.n_layers}", f"--llama.num_attention_heads={shape.n_heads}",
                 f"--llama.num_key_value_heads={shape.n_kv_heads}", f"--llama.rms_norm_eps={shape.norm_eps:g}",
                 f"--llama.max_position_embeddings={config.max_position_embeddings}"]
        commands["easylm"] = (f"python -m EasyLM.models.llama.llama_serve {ckpt} --tokenizer='{model_dir}' "
                              + " ".join(flags))
    if problems["coh"] is None:
        if arch == "llama":
            vocab_file = stream.parent / "tokenizer.model"
            vocab_file = f"'{vocab_file}'" if vocab_file.is_file() else "PATH/TO/tokenizer.model"
            commands["coh"] = (f"python -m coh.coh_serve_llama --load_llama_config='json::{config_json}' {ckpt} "
                               f"--tokenizer.vocab_file={vocab_file}")
        else:
            commands["coh"] = (f"python -m coh.coh_serve_gptj --load_gptj_config='json::{config_json}' {ckpt} "
                               f"--tokenizer.name='{model_dir}'")
    return commands
