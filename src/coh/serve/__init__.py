"""``coh serve``: an OpenAI-compatible HTTP server and a chat page for any Hugging Face causal LM,
prompting ``coh train`` checkpoints the way they were trained.

- the model runs in ``coh.generation.engine`` (one worker thread that batches requests).
- ``config``: ``ServeConfig``, every ``coh serve`` option (the engine's and the server's).
- ``prompts``: chat messages into prompt tokens (the CoH prompt or the tokenizer's chat template).
- ``app``: the FastAPI app (``Server``): what every route shares, health probes, the chat page.
- ``schemas``: request bodies and their validation; ``errors``: every error in OpenAI's shape,
  the body limit and the OpenAPI schema.
- ``openai_api``: completions, chat, models and the tokenizer endpoints lm-evaluation-harness
  uses; ``answers``: the answer shapes (usage, both logprobs formats); ``streaming``: SSE.
- ``original_api``: the original EasyLM server's endpoints.
- ``command``: the ``coh serve`` command line.
"""
