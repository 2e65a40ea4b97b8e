"""``coh convert``: checkpoints in and out.

- ``meta_llama``: Meta LLaMA ``consolidated.*.pth`` + ``params.json`` + ``tokenizer.model`` -> HF.
- ``easylm``: EasyLM / original-CoH ``streaming_params`` msgpack streams (LLaMA, GPT-J) <-> HF,
  from ``easylm_stream`` (the file format), ``easylm_names`` (parameter names),
  ``easylm_configs`` (model configs) and ``easylm_targets`` (the code bases that load the files).
- ``lora``: a peft LoRA adapter merged into its base model.
- ``sharded``: a ``torch.distributed.checkpoint`` training checkpoint -> consolidated HF safetensors.
- ``check``: ``--check``'s prompts and verdict; ``config``: each action's options; ``command``:
  the ``coh convert`` sub-commands.
- ``reference``: plain-torch forward passes over the source layouts, so ``--check`` compares the
  converted model against the source weights through code that shares nothing with the converter.

Every writer streams tensors into size-capped safetensors shards (``safetensors_io``), so no
conversion holds the whole model in memory.
"""
