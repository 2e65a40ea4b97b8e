"""The options of each ``coh convert`` action: one config dataclass per action, its fields made
with ``coh.options.option`` (help text, default, spellings), so ``coh.options`` builds the flags,
the ``--config`` recipe and ``--print-config`` from them. Each class checks itself in
``__post_init__``: the command line, a recipe and a Python caller get the same checks.

Nothing heavy is imported at module level: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

from coh.options import check_fields, check_range, option

TOLERANCE = 1e-4  # --check: max |logit difference| allowed, relative to max(1, max |source logit|)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def _max_shard_size() -> str:
    return option("5GB", "largest safetensors file (5GB, 500MB, 2GiB or a number of bytes)")


def _coh_phrases() -> bool:
    return option(False, "write coh.json with the original CoH phrases (for weights trained by the CoH code)")


def _output_dir(text: str = "new folder for the HF model") -> str:
    return option(help=text, positional=True)


@dataclass(kw_only=True)
class ConvertConfig:
    """The options every ``coh convert`` action has: the written dtype and the logits check."""

    dtype: str = option("auto", "dtype of the written weights (auto: the source's)", choices=DTYPE_CHOICES)
    check: bool = option(False, "compare the converted model's logits with the source's (float32; holds the "
                                "converted model in memory) and exit 1 if they differ beyond the tolerance")
    tolerance: float = option(TOLERANCE, "check tolerance, relative to max(1, max |source logit|)")
    progress: bool = option(True, "progress bars on a terminal")
    push_to_hub: str | None = option(None, "after converting (and a passing --check), upload OUTPUT_DIR with its "
                                           "model card to this Hub model repository, created if missing",
                                     metavar="OWNER/NAME")
    hub_private: bool = option(False, "create the --push-to-hub repository private")
    hub_token_env: str = option("HF_TOKEN", "environment variable holding the Hub token for --push-to-hub (unset: "
                                            "the token of `hf auth login`)", metavar="VAR")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.push_to_hub:
            from coh.hub import check_repo_id

            check_repo_id(self.push_to_hub)
        check_range(self, "tolerance", 0, low_open=True)
        if hasattr(self, "max_shard_size"):  # the actions that write safetensors shards
            from coh.convert.safetensors_io import parse_size

            parse_size(self.max_shard_size)  # a ValueError naming the form expected

    @property
    def progress_bars(self) -> bool | None:
        """The converters' ``progress``: None (bars on a terminal only) or False (none)."""
        return None if self.progress else False


@dataclass
class MetaLlamaConvertConfig(ConvertConfig):
    """``coh convert llama``: a Meta LLaMA checkpoint into an HF folder."""

    meta_dir: str = option(help="folder with params.json, consolidated.NN.pth and (usually) tokenizer.model",
                           positional=True)
    output_dir: str = _output_dir()
    tokenizer: str | None = option(None, "a SentencePiece tokenizer.model or an HF tokenizer folder (none: "
                                         "META_DIR/tokenizer.model)")
    max_position_embeddings: int | None = option(None, "context length for config.json (none: params.json's "
                                                       "max_seq_len, else 2048)", metavar="N")
    coh_phrases: bool = _coh_phrases()
    max_shard_size: str = _max_shard_size()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "max_position_embeddings", 1)


@dataclass
class EasyLMConvertConfig(ConvertConfig):
    """``coh convert easylm``: an EasyLM / original-CoH streaming checkpoint into an HF folder.
    ``--config`` names the model's config here (as in EasyLM), so this action takes no recipe."""

    stream: str = option(help="the streaming_params (or streaming_train_state) file", positional=True)
    output_dir: str = _output_dir()
    model_config: str | None = option(
        None, "model size (1b 3b 7b 13b 30b 65b for LLaMA, 6b for GPT-J; or EasyLM's --llama.base_model names: "
              "llama_7b llama2_7b llama3_8b ...), an EasyLM or HF config JSON, or a folder with config.json "
              "(none: the standard size whose shapes match)", flags=("--config",), metavar="SIZE_OR_FILE")
    tokenizer: str | None = option(None, "LLaMA: a SentencePiece tokenizer.model; GPT-J: an HF tokenizer folder")
    coh_phrases: bool = _coh_phrases()
    max_shard_size: str = _max_shard_size()


@dataclass
class ToEasyLMConvertConfig(ConvertConfig):
    """``coh convert to-easylm``: an HF LLaMA / GPT-J folder as EasyLM streaming_params."""

    model_dir: str = option(help="HF model folder (safetensors)", positional=True)
    output_dir: str = _output_dir("folder for streaming_params and easylm_config.json")
    target: str = option("all", "the code base that will load the files: easylm (EasyLM since May 2024, --llama.* "
                                "flags, LLaMA only), coh (the original CoH code and older EasyLM, json:: configs; "
                                "no GQA, no rope_theta); all prints the command for every one that can run the "
                                "model. A named target that cannot run the model is refused before anything is "
                                "written", choices=("all", "easylm", "coh"))


@dataclass
class LoraMergeConfig(ConvertConfig):
    """``coh convert lora-merge``: a peft LoRA adapter merged into its base model."""

    adapter_dir: str = option(help="peft adapter folder (adapter_config.json, adapter_model.safetensors)",
                              positional=True)
    output_dir: str = _output_dir()
    base: str | None = option(None, "base model path or hub id (none: the adapter's base_model_name_or_path)")
    max_shard_size: str = _max_shard_size()


@dataclass
class ShardedConvertConfig(ConvertConfig):
    """``coh convert sharded``: a sharded training checkpoint into consolidated HF safetensors."""

    checkpoint_dir: str = option(help="checkpoint folder holding model_sharded/ and config.json", positional=True)
    output_dir: str = _output_dir()
    max_shard_size: str = _max_shard_size()
