"""``coh serve``: an OpenAI-compatible HTTP server and a chat page for any Hugging Face causal LM,
prompting ``coh train`` checkpoints the way they were trained.

- the model runs in ``coh.generation.engine`` (one worker thread that batches requests).
- ``prompts``: chat messages into prompt tokens (the CoH prompt or the tokenizer's chat template).
- ``app``: the FastAPI routes (OpenAI, tokenizer endpoints, the original EasyLM server's endpoints).
- ``command``: the ``coh serve`` command line.
"""
