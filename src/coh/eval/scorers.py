"""Scorers give a reply to a conversation one number (higher is better): what ``coh eval``'s
controllability and pairwise protocols rank replies by. (People comparing replies are ``coh judge``.)

Two kinds, chosen by one ``--scorer`` string (``load_scorer``):

- ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``: a Python function ``f(prompt: str, reply: str) ->
  float``; ``prompt`` is the conversation as text (``coh.eval.examples.conversation_text``);
- anything else: a Hugging Face sequence-classification model (hub id or folder), a reward
  model. Its score is the logit when it has one label, else the log-probability of its last
  label (by convention the positive one). A tokenizer with a chat template gets the
  conversation as messages; one without gets (prompt, reply) as a text pair, the input format
  of reward models such as OpenAssistant's DeBERTa ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from coh.data.feedback import Turn
from coh.eval.examples import conversation_text


class Scorer(Protocol):
    name: str

    def score(self, contexts: Sequence[Sequence[Turn]], replies: Sequence[str]) -> list[float]:
        """One score per (context, reply); higher is better."""
        ...


class FunctionScorer:
    """A Python function ``f(prompt: str, reply: str) -> float``."""

    def __init__(self, fn: Callable[[str, str], float], name: str):
        self.fn, self.name = fn, name

    def score(self, contexts: Sequence[Sequence[Turn]], replies: Sequence[str]) -> list[float]:
        out = []
        for k, (turns, reply) in enumerate(zip(contexts, replies)):
            try:
                value = self.fn(conversation_text(turns), reply)
            except Exception as e:  # the user's code: say whose and on what; COH_TRACEBACK=1 shows where
                raise ValueError(f"scorer {self.name} raised {type(e).__name__}: {e} (on reply {k + 1}: "
                                 f"{_clip(reply)!r})") from e
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"scorer {self.name} returned {type(value).__name__} {_clip(repr(value))}; "
                                 "expected a number")
            if not math.isfinite(value):
                # nan compares as neither better nor worse: every such pair would count as a tie
                raise ValueError(f"scorer {self.name} returned {value} on reply {k + 1} ({_clip(reply)!r}); "
                                 "expected a finite number")
            out.append(float(value))
        return out


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class RewardModelScorer:
    """A sequence-classification model scoring (conversation, reply), batched, no gradient."""

    def __init__(self, name_or_path: str, device: str | None = None, batch_size: int = 8, max_length: int = 2048,
                 progress: bool = False, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForSequenceClassification

        from coh.models import check_model_folder, check_tokenizer_folder, load_tokenizer, pick_device

        self.name = name_or_path
        label = f"scorer '{name_or_path}'"
        check_model_folder(name_or_path, label)
        check_tokenizer_folder(name_or_path, label, "model")
        self.tokenizer = load_tokenizer(name_or_path, trust_remote_code, label)
        try:  # coh.models.load_model loads causal LMs; a reward model has a classification head
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, dtype=torch.float32, output_loading_info=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"scorer '{name_or_path}': cannot load a sequence-classification model ({e}); "
                             "give a reward model (hub id or folder) or MODULE:FUNCTION") from None
        if info.get("missing_keys"):
            # e.g. a causal LM: transformers would add a freshly drawn head and the scores would be noise
            missing = sorted(info["missing_keys"])
            raise ValueError(f"scorer '{name_or_path}': not a trained sequence-classification model ({len(missing)} "
                             f"weight(s) missing and would be random, e.g. {missing[0]}); give a reward model or "
                             "MODULE:FUNCTION")
        if self.tokenizer.pad_token_id is None:  # batches need padding; the model finds the last real token by it
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress

    def _encode(self, contexts: Sequence[Sequence[Turn]], replies: Sequence[str]):
        tok = self.tokenizer
        common = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template([{"role": t.role, "content": t.text} for t in turns]
                                             + [{"role": "assistant", "content": reply}], tokenize=False)
                     for turns, reply in zip(contexts, replies)]
            # The template writes the special tokens itself (BOS included): add none.
            return tok(texts, add_special_tokens=False, **common)
        return tok([conversation_text(t) for t in contexts], list(replies), **common)

    def score(self, contexts: Sequence[Sequence[Turn]], replies: Sequence[str]) -> list[float]:
        import torch
        from tqdm import tqdm

        out: list[float] = []
        for start in tqdm(range(0, len(replies), self.batch_size), desc=f"score ({Path(self.name).name})",
                          disable=not self.progress):
            batch = self._encode(contexts[start:start + self.batch_size], replies[start:start + self.batch_size])
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
            scores = logits[:, 0] if logits.shape[-1] == 1 else torch.log_softmax(logits, -1)[:, -1]
            out.extend(scores.cpu().tolist())
        return out


def _load_function(spec: str) -> Callable[[str, str], float]:
    target, _, fn_name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FileNotFoundError(f"scorer '{spec}': no such file {path}")
            module_spec = importlib.util.spec_from_file_location(f"coh_scorer_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except FileNotFoundError:
        raise
    except ImportError as e:
        raise ValueError(f"scorer '{spec}': cannot import module '{target}' ({e})") from None
    except Exception as e:  # a syntax error or an exception while the user's module runs
        raise ValueError(f"scorer '{spec}': loading '{target}' failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"scorer '{spec}': '{target}' has no function '{fn_name}'")
    try:
        inspect.signature(fn).bind("prompt", "reply")
    except TypeError:
        raise ValueError(f"scorer '{spec}': {fn_name}{inspect.signature(fn)} cannot be called as "
                         f"{fn_name}(prompt, reply)") from None
    except ValueError:  # no signature to read (some built-ins): find out when it is called
        pass
    return fn


def is_function_spec(spec: str) -> bool:
    """``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` (hub ids and folders hold no ':' before a name)."""
    target, sep, fn_name = spec.rpartition(":")
    return bool(sep and target and fn_name.isidentifier() and not Path(spec).exists())


def load_scorer(spec: str, device: str | None = None, batch_size: int = 8, progress: bool = False,
                trust_remote_code: bool = False) -> Scorer:
    """A scorer from its ``--scorer`` string (see the module docstring); ``trust_remote_code``: a
    reward model may run its own code."""
    if is_function_spec(spec):
        return FunctionScorer(_load_function(spec), spec)
    target, sep, fn_name = spec.rpartition(":")
    if sep and not Path(spec).exists() and (not target or target.endswith(".py") or not fn_name.isidentifier()):
        raise ValueError(f"scorer '{spec}': expected MODULE:FUNCTION or FILE.py:FUNCTION with FUNCTION a Python "
                         "name, or a reward model (hub id or folder)")
    return RewardModelScorer(spec, device=device, batch_size=batch_size, progress=progress,
                             trust_remote_code=trust_remote_code)
