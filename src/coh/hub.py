"""Pushing a finished model folder to the Hugging Face Hub (``--push-to-hub REPO_ID`` of ``coh
train`` and ``coh convert``): ``huggingface_hub``'s ``create_repo`` + ``upload_folder``, after the
folder is complete. A failed upload is a ``HubPushError`` (a ``ValueError``: the CLI prints it as
one line) that keeps the local folder and says how to push it again.

The token: the variable named by ``--hub-token-env`` (default ``HF_TOKEN``), else whatever
``huggingface_hub`` finds itself (a stored ``hf auth login``). ``HF_ENDPOINT``, read at the call,
points the client at another Hub (a mirror, or the tests' local fake).
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "HF_TOKEN"
# Local bookkeeping a model repository does not need: the completeness marker of coh's folders.
IGNORED = ["COMPLETE", ".*.tmp", ".*.old"]


class HubPushError(ValueError):
    """An upload to the Hub that did not happen (the local folder is kept)."""


def check_repo_id(repo_id: str, option: str = "push_to_hub") -> None:
    """``ValueError`` unless ``repo_id`` is a Hub repo id (``name`` or ``owner/name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{option} {repo_id!r} is not a Hub repo id (expected OWNER/NAME: {e})") from None


def hub_token(token_env: str | None = TOKEN_ENV) -> str | None:
    """The token in the variable ``token_env``, else the one ``huggingface_hub`` finds (None: none)."""
    from huggingface_hub import get_token

    return (os.environ.get(token_env) if token_env else None) or get_token()


def check_push_ready(repo_id: str, token_env: str | None = TOKEN_ENV) -> None:
    """Before a long run: the repo id is valid and a token is there. ``ValueError`` otherwise."""
    check_repo_id(repo_id)
    if hub_token(token_env) is None:
        raise ValueError(f"push_to_hub {repo_id}: no Hugging Face token; set {token_env or TOKEN_ENV} (or the "
                         "variable --hub-token-env names), or run `hf auth login`")


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, token_env: str | None = TOKEN_ENV,
                commit_message: str | None = None) -> str:
    """Create ``repo_id`` (a model repository; kept if it exists) and upload every file of
    ``folder`` to its root in one call. Returns the repository's URL. ``HubPushError`` names the
    repository, the reason and the folder, which is left as it was."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=hub_token(token_env))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", ignore_patterns=list(IGNORED),
                          commit_message=commit_message or f"Upload {folder.name} with coh (chain-of-hindsight)")
    except Exception as e:  # HTTP errors, no network, offline mode, a bad token: one message, no traceback
        lines = [x.strip() for x in str(e).splitlines() if x.strip() and not x.startswith("For more information")]
        reason = "; ".join(lines).rstrip(".") or type(e).__name__
        raise HubPushError(f"pushing {folder} to the Hub repository {repo_id} failed: {reason}. The model is kept "
                           f"in {folder}; push it again with `hf upload {repo_id} {folder} .`") from e
    print(f"pushed {folder} to {url}")
    return str(url)
