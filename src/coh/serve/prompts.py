"""Chat messages into prompt token ids, the way the model was trained.

Formats (``--prompt-format``):

- ``coh``: the Chain-of-Hindsight prompt, built by ``coh.data.render.prompt_record`` exactly as
  training rendered context (``User: hi A helpful answer:``; earlier replies under the good
  phrase, each closed by EOS), with the phrases from the checkpoint's ``coh.json``.
- ``chat-template``: the tokenizer's chat template with the generation prompt. When the reply is
  conditioned on a phrase, the phrase opens the assistant turn, as ``coh data`` renders CoH
  records of chat data through a template (phrase and output in one assistant message).
- ``auto``: for a folder with ``coh.json``, the format it was trained in (its ``prompt_format``:
  ``coh``, or ``chat-template`` for chat data); else ``chat-template`` when the tokenizer has
  one; else ``coh`` with the default phrases.

``feedback`` (the request field) picks the phrase the reply is conditioned on: ``good``,
``bad``, ``none`` (no phrase), or any literal phrase text; absent, the server's default:
``good`` for CoH checkpoints and for plain models prompted in the CoH format, ``none`` for chat
templates of models without ``coh.json`` and for checkpoints trained in ``sft`` mode (their
replies follow no phrase).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from coh.cohjson import CohJson
from coh.data.feedback import Turn
from coh.data.phrases import PhraseSet
from coh.data.render import prompt_record
from coh.data.tokenize import RecordTokenizer, tokenizer_adds_bos

PROMPT_FORMATS = ("auto", "coh", "chat-template")


@dataclass(frozen=True)
class Prompter:
    """How messages become prompt ids for one tokenizer (see the module docstring)."""

    tokenizer: object
    format: str
    phrases: PhraseSet
    default_feedback: str
    origin: str  # why this format was chosen, for the start-up message and /info

    @classmethod
    def for_model(cls, model: str, tokenizer, prompt_format: str = "auto") -> Prompter:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}")
        info, found_at = CohJson.find(model)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat-template" and not has_template:
            raise ValueError(f"--prompt-format chat-template, but the tokenizer of {model} has no chat template")
        if info is not None:
            phrases, default = info.phrases, info.default_feedback
            origin = f"{found_at} (mode {info.mode})"
        else:
            phrases, default, origin = PhraseSet(), "good", "default phrases (no coh.json)"
        fmt = prompt_format
        if fmt == "auto":
            if info is not None:  # as trained: chat data went through the template (coh.json says so)
                fmt = info.prompt_format if has_template else "coh"
            else:
                fmt = "chat-template" if has_template else "coh"
        if fmt == "chat-template" and info is None:
            default, origin = "none", "the tokenizer's chat template (no coh.json)"
        return cls(tokenizer, fmt, phrases, default, origin)

    @functools.cached_property
    def record_tokenizer(self) -> RecordTokenizer:
        return RecordTokenizer(self.tokenizer, chat_template="never")

    def phrase(self, feedback: str | None) -> str | None:
        """The phrase text for a request's ``feedback`` (None: the default); None for no phrase."""
        feedback = self.default_feedback if feedback is None else feedback
        if not feedback.strip():
            raise ValueError("feedback must be 'good', 'bad', 'none' or a phrase; got an empty string")
        if feedback == "none":
            return None
        return {"good": self.phrases.good, "bad": self.phrases.bad}.get(feedback, feedback)

    def stop_strings(self) -> tuple[str, ...]:
        """Stops added to every chat reply: in the CoH format a reply ends where the next user turn
        would begin (models trained briefly do not always write EOS first)."""
        return (self.phrases.user,) if self.format == "coh" else ()

    def chat_ids(self, turns: Sequence[Turn], feedback: str | None = None) -> list[int]:
        """Prompt ids for the next assistant reply after ``turns``."""
        if not any(t.role == "user" for t in turns):
            raise ValueError("messages need at least one user message")
        phrase = self.phrase(feedback)
        if self.format == "coh":
            # prompt_segments maps "good"/"bad" to the phrases itself; a resolved phrase is literal text.
            return self.record_tokenizer(prompt_record(list(turns), self.phrases, phrase)).input_ids
        return self._template_ids(turns, phrase)

    def _template_ids(self, turns: Sequence[Turn], phrase: str | None) -> list[int]:
        tok = self.tokenizer
        history_phrase = self.phrases.good if self.default_feedback != "none" else None
        messages = [{"role": t.role, "content": f"{history_phrase} {t.text}" if t.role == "assistant" and history_phrase
                     else t.text} for t in turns]
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2's TemplateError and friends: templates raise what they like
            raise ValueError(f"the chat template refused these messages: {e}") from None
        if phrase is not None:
            text += phrase
        ids = tok(text, add_special_tokens=False)["input_ids"]
        bos = tok.bos_token
        if tokenizer_adds_bos(tok) and not (bos and text.startswith(bos)):
            ids = [tok.bos_token_id, *ids]  # the model's convention, and never two BOS
        return ids

    def describe(self) -> dict:
        return {"prompt_format": self.format, "phrases": {"user": self.phrases.user, "good": self.phrases.good,
                                                          "bad": self.phrases.bad},
                "default_feedback": self.default_feedback, "prompt_source": self.origin}
