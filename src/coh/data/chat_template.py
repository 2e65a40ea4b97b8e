"""The CoH chat template: the prompt format a checkpoint carries, for any engine that applies
the tokenizer's chat template (transformers, vLLM, TGI, chat UIs).

``coh_chat_template(tokenizer, phrases, ...)`` returns a Jinja template that renders chat messages
exactly as training rendered context (the one home of that rendering at inference; ``coh serve``
applies it too):

- plain CoH text (``base_template=None``), as ``coh.data.render.prompt_record`` and
  ``RecordTokenizer(tok, chat_template="never")`` do: ``User: <text>`` for user turns, the good
  phrase before each earlier assistant turn and an EOS after it, one space between segments
  except at the start and after EOS (``coh.data.records.separator``), BOS first where the
  tokenizer adds one by itself;
- through a base chat template (records of chat data, ``RecordTokenizer`` ``auto``/``always``):
  the base template, with the good phrase opening each earlier assistant message and the
  conditioning phrase opening the generated turn, as ``coh.data.tokenize.chat_messages`` groups a
  feedback phrase and its output into one assistant message.

Template variable ``feedback``: ``good`` (the default, ``none`` for sft/dpo checkpoints),
``bad``, ``none`` (no phrase) or any phrase text. So
``tok.apply_chat_template(messages, add_generation_prompt=True, feedback="bad")`` gives the
negative prompt's ids, and vLLM's ``chat_template_kwargs={"feedback": "bad"}`` serves it.

Token-exactness: ``apply_chat_template`` tokenizes the rendered text as one string with
``add_special_tokens=False``, while training encodes the text between EOS tokens piece by piece.
Where a tokenizer puts a word-start marker only at the very start of a string (Metaspace
``prepend_scheme="first"``), text right after a special token loses it; the template then writes
one space after BOS/EOS (probed once per tokenizer by :func:`_gap_after`), so the ids are
training's. The phrases are embedded as JSON strings, which are valid Jinja string literals.
"""

from __future__ import annotations

import json
import re

from coh.data.phrases import PhraseSet
from coh.data.tokenize import tokenizer_adds_bos

MARKER = "coh chat template v1"  # first line of every template written here
_BASE_LINE = re.compile(r"^\{%- set coh_base_template = (.*) -%\}$", re.MULTILINE)
_FORMAT_LINE = re.compile(r"^\{%- set coh_format = (.*) -%\}$", re.MULTILINE)
FEEDBACK_VALUES = ("good", "bad", "none")


def is_coh_template(template: object) -> bool:
    """Whether ``template`` (a tokenizer's ``chat_template``) is one this module wrote."""
    return isinstance(template, str) and template.startswith("{#- " + MARKER)


def template_format(template: object) -> str | None:
    """How a CoH template renders: ``coh`` (plain CoH text) or ``chat-template`` (through its base);
    None for any other template."""
    found = _FORMAT_LINE.search(template) if is_coh_template(template) else None
    return json.loads(found.group(1)) if found else None


def base_chat_template(template: object) -> str | None:
    """The model's own chat template under ``template``: the one a CoH template extends or keeps
    (None if the model had none), or ``template`` itself when it is not a CoH template. So
    retraining from a CoH checkpoint renders chat data through the model's template, not through
    CoH twice."""
    if not isinstance(template, str) or not template:
        return None
    if not is_coh_template(template):
        return template
    found = _BASE_LINE.search(template)
    return json.loads(found.group(1)) if found and found.group(1) != "none" else None


def with_base_template(tokenizer):
    """``tokenizer`` with its chat template set back to the model's own (a CoH checkpoint's
    tokenizer renders chat records through its base, never through CoH twice); returns it."""
    tokenizer.chat_template = base_chat_template(getattr(tokenizer, "chat_template", None))
    return tokenizer


def _lit(value: object) -> str:
    # ensure_ascii=False: Jinja decodes \u escapes one UTF-16 unit at a time (no surrogate pairs).
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def _gap_after(tokenizer, special: str | None, special_id: int | None, following: str) -> str:
    """What to write between ``special`` and ``following`` so that the text tokenizes as
    ``[special_id] + ids(following)`` (training's pieces): ``""`` for most tokenizers, ``" "`` where
    the word-start marker goes only at a string's start. ``ValueError`` if neither does."""
    if not special or special_id is None or not following:
        return ""
    want = [special_id, *tokenizer(following, add_special_tokens=False)["input_ids"]]
    for gap in ("", " "):
        if tokenizer(special + gap + following, add_special_tokens=False)["input_ids"] == want:
            return gap
    raise ValueError(f"tokenizer {type(tokenizer).__name__}: no text after {special!r} tokenizes as "
                     f"{following!r} does alone; a chat template cannot reproduce training's ids")


def _header(phrases: PhraseSet, default_feedback: str, base_template: str | None, own_template: str | None
            ) -> list[str]:
    if default_feedback not in FEEDBACK_VALUES:
        raise ValueError(f"default_feedback must be one of {list(FEEDBACK_VALUES)}, got {default_feedback!r}")
    return [
        "{#- " + MARKER + " (chain-of-hindsight): renders chats as training did. Variable feedback: "
        "'good' (default), 'bad', 'none' or any phrase text. -#}",
        f"{{%- set coh_format = {_lit('coh' if base_template is None else 'chat-template')} -%}}",
        f"{{%- set coh_base_template = {_lit(base_template if base_template is not None else own_template)} -%}}",
        f"{{%- set coh_good = {_lit(phrases.good)} -%}}",
        f"{{%- set coh_bad = {_lit(phrases.bad)} -%}}",
        f"{{%- set coh_feedback = feedback if feedback is defined and feedback is not none else {_lit(default_feedback)} -%}}",
        "{%- if coh_feedback == 'good' -%}{%- set coh_phrase = coh_good -%}"
        "{%- elif coh_feedback == 'bad' -%}{%- set coh_phrase = coh_bad -%}"
        "{%- elif coh_feedback == 'none' -%}{%- set coh_phrase = '' -%}"
        "{%- else -%}{%- set coh_phrase = coh_feedback -%}{%- endif -%}",
    ]


def coh_chat_template(tokenizer, phrases: PhraseSet | None = None, *, default_feedback: str = "good",
                      base_template: str | None = None, history_phrase: str | None = "good",
                      own_template: str | None = None) -> str:
    """A Jinja chat template rendering chats the CoH way for ``tokenizer`` (see the module docstring).

    ``phrases``: the trained phrases (``CohJson.phrases``). ``default_feedback``: ``feedback`` when
    the caller passes none (``CohJson.default_feedback``). ``base_template``: the model's chat
    template that training rendered chat data through, or None for plain CoH text.
    ``history_phrase``: ``"good"`` (the good phrase opens earlier assistant turns, as in training)
    or None (no phrase, for a model never trained with CoH; only with a base template).
    ``own_template``: in plain CoH text, the model's chat template, kept (unused) inside so that
    :func:`base_chat_template` finds it again."""
    phrases = phrases or PhraseSet()
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; CoH closes every reply with one")
    if history_phrase not in ("good", None) or (history_phrase is None and base_template is None):
        raise ValueError("history_phrase must be 'good', or None with a base template")
    base_template = base_chat_template(base_template)
    lines = _header(phrases, default_feedback, base_template, base_chat_template(own_template))
    adds_bos = tokenizer_adds_bos(tokenizer)
    if base_template is None:
        lines += _plain_body(tokenizer, phrases, adds_bos)
    else:
        lines += _wrapped_body(tokenizer, base_template, adds_bos, history_phrase is not None)
    return "\n".join(lines)


def _plain_body(tokenizer, phrases: PhraseSet, adds_bos: bool) -> list[str]:
    """Plain CoH text; ``ns.gap`` is what starts the next segment: ``" "`` inside a turn, the probed
    gap after BOS/EOS, ``""`` at the very start."""
    probe = phrases.user + " Hello"
    bos_gap = _gap_after(tokenizer, tokenizer.bos_token, tokenizer.bos_token_id, probe) if adds_bos else ""
    eos_gap = _gap_after(tokenizer, tokenizer.eos_token, tokenizer.eos_token_id, probe)
    return [
        f"{{%- set coh_user = {_lit(phrases.user)} -%}}",
        f"{{%- set ns = namespace(gap={_lit(bos_gap)}) -%}}",
        "{{- bos_token -}}" if adds_bos else "",
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'system' -%}{{- ns.gap + message['content'] -}}",
        "{%- elif message['role'] == 'user' -%}{{- ns.gap + coh_user + ' ' + message['content'] -}}",
        "{%- elif message['role'] == 'assistant' -%}{{- ns.gap + coh_good + ' ' + message['content'] + eos_token -}}",
        "{%- else -%}{{- raise_exception('CoH chats have system, user and assistant messages, not ' + message['role']) -}}",
        "{%- endif -%}",
        f"{{%- set ns.gap = {_lit(eos_gap)} if message['role'] == 'assistant' else ' ' -%}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt and coh_phrase -%}{{- ns.gap + coh_phrase -}}{%- endif -%}",
    ]


def _wrapped_body(tokenizer, base_template: str, adds_bos: bool, history: bool) -> list[str]:
    """The base template over the messages with the good phrase opening earlier assistant
    messages, then the conditioning phrase after its generation prompt. BOS first where the
    tokenizer adds one and the base template does not write it (as ``RecordTokenizer`` does)."""
    sample = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], chat_template=base_template,
                                           tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    add_bos = adds_bos and not (bos and sample.startswith(bos))
    gap = _gap_after(tokenizer, bos, tokenizer.bos_token_id, sample) if add_bos else ""
    lines = [
        "{%- set ns = namespace(messages=[]) -%}",
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'assistant' -%}"
        "{%- set ns.messages = ns.messages + [dict(message, content=coh_good + ' ' + message['content'])] -%}"
        "{%- else -%}{%- set ns.messages = ns.messages + [message] -%}{%- endif -%}",
        "{%- endfor -%}",
        "{%- set messages = ns.messages -%}",
    ] if history else []
    if add_bos:
        lines.append("{{- bos_token + " + _lit(gap) + " -}}")
    # Joined without whitespace control at the seams, so the base renders as it does on its own
    # (less the one trailing newline Jinja drops from a template's source).
    base = base_template[:-1] if base_template.endswith("\n") else base_template
    lines.append("{%- set coh_base = true %}" + base
                 + "{% if add_generation_prompt and coh_phrase %}{{ coh_phrase }}{% endif %}")
    return lines


def checkpoint_chat_template(tokenizer, info) -> str:
    """The template ``coh train`` writes into a checkpoint with ``coh.json`` ``info`` (a
    ``coh.cohjson.CohJson``): the trained phrases and mode, through the tokenizer's own chat
    template when training rendered chat data with it (``prompt_format`` ``chat-template``)."""
    base = base_chat_template(getattr(tokenizer, "chat_template", None))
    return coh_chat_template(tokenizer, info.phrases, default_feedback=info.default_feedback,
                             base_template=base if info.prompt_format == "chat-template" else None, own_template=base)
