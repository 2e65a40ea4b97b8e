"""Chat messages into prompt token ids, the way the model was trained.

Formats (``--prompt-format``):

- ``coh``: the Chain-of-Hindsight prompt, built by ``coh.data.render.prompt_record`` exactly as
  training rendered context (``User: hi A helpful answer:``; earlier replies under the good
  phrase, each closed by EOS), with the phrases from the checkpoint's ``coh.json``.
- ``chat-template``: the tokenizer's chat template with the generation prompt. When the reply is
  conditioned on a phrase, the phrase opens the assistant turn, as ``coh data`` renders CoH
  records of chat data through a template (phrase and output in one assistant message); earlier
  replies open with the good phrase for CoH checkpoints, with none for plain models.
- ``auto``: for a folder with ``coh.json``, the format it was trained in (its ``prompt_format``:
  ``coh``, or ``chat-template`` for chat data); else ``chat-template`` when the tokenizer has
  one; else ``coh`` with the default phrases.

Both render through one Jinja template, ``coh.data.chat_template.coh_chat_template``: the one a
checkpoint of ``coh train`` carries as its tokenizer's chat template, or, for a folder without it
(a plain model, an older checkpoint, another format asked for), the same template built here.

``feedback`` (the request field) picks the phrase the reply is conditioned on: ``good``,
``bad``, ``none`` (no phrase), or any literal phrase text; absent, the server's default:
``good`` for CoH checkpoints and for plain models prompted in the CoH format, ``none`` for chat
templates of models without ``coh.json`` and for checkpoints trained in ``sft`` mode (their
replies follow no phrase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coh.cohjson import CohJson
from coh.data.chat_template import base_chat_template, coh_chat_template, template_format
from coh.data.feedback import Turn
from coh.data.phrases import PhraseSet

PROMPT_FORMATS = ("auto", "coh", "chat-template")


@dataclass(frozen=True)
class Prompter:
    """How messages become prompt ids for one tokenizer (see the module docstring)."""

    tokenizer: object
    format: str
    phrases: PhraseSet
    default_feedback: str
    origin: str  # why this format was chosen, for the start-up message and /info
    template: str  # the CoH chat template the prompts are rendered with
    base_template: str | None = None  # the model's own chat template under it (chat-template format)

    @classmethod
    def for_model(cls, model: str, tokenizer, prompt_format: str = "auto") -> Prompter:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}")
        info, found_at = CohJson.find(model)
        own = getattr(tokenizer, "chat_template", None)
        base = base_chat_template(own)
        if prompt_format == "chat-template" and base is None:
            raise ValueError(f"--prompt-format chat-template, but the tokenizer of {model} has no chat template")
        if info is not None:
            phrases, default = info.phrases, info.default_feedback
            origin = f"{found_at} (mode {info.mode})"
        else:
            phrases, default, origin = PhraseSet(), "good", "default phrases (no coh.json)"
        fmt = prompt_format
        if fmt == "auto":
            if info is not None:  # as trained: chat data went through the template (coh.json says so)
                fmt = info.prompt_format if base is not None else "coh"
            else:
                fmt = "chat-template" if base is not None else "coh"
        if fmt == "chat-template" and info is None:
            default, origin = "none", "the tokenizer's chat template (no coh.json)"
        base = base if fmt == "chat-template" else None
        if info is not None and template_format(own) == fmt:
            template = own  # the checkpoint's own
            origin += "; its tokenizer's CoH chat template"
        else:
            template = coh_chat_template(tokenizer, phrases, default_feedback=default, base_template=base,
                                         history_phrase="good" if info is not None or base is None else None)
        return cls(tokenizer, fmt, phrases, default, origin, template, base)

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
        """Prompt ids for the next assistant reply after ``turns``, through :attr:`template`."""
        if not any(t.role == "user" for t in turns):
            raise ValueError("messages need at least one user message")
        self.phrase(feedback)  # checks it
        messages = [{"role": t.role, "content": t.text} for t in turns]
        try:
            return list(self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, add_generation_prompt=True, tokenize=True,
                feedback=self.default_feedback if feedback is None else feedback)["input_ids"])
        except Exception as e:  # jinja2's TemplateError and friends: templates raise what they like
            raise ValueError(f"the chat template refused these messages: {e}") from None

    def describe(self) -> dict:
        return {"prompt_format": self.format, "phrases": {"user": self.phrases.user, "good": self.phrases.good,
                                                          "bad": self.phrases.bad},
                "default_feedback": self.default_feedback, "prompt_source": self.origin}
