"""Records into token ids and a token-level loss mask.

Contract of ``RecordTokenizer.__call__(record) -> TokenizedRecord``:

- ``input_ids``: one BOS first if and only if the tokenizer adds one by itself (LLaMA yes,
  GPT-2 / Qwen no), never two; then the tokens of each segment; one EOS after every segment with
  ``eos`` (the tokenizer's ``eos_token_id``).
- ``loss_mask[i]`` is 1 where token ``i`` is a training target (predicted from tokens ``< i``):
  the tokens of segments with ``loss`` and the EOS closing them. BOS is never a target.
- Text is tokenized in pieces that break wherever the loss flag changes and at every EOS, so no
  token spans a loss boundary and the mask never moves with a merge; inside a piece the
  tokenizer sees running text. A separating space at the start of a piece is kept where the
  tokenizer encodes it as in running text (byte-level BPE, Metaspace) and dropped where the
  tokenizer puts back a word-start marker by itself (SentencePiece with a ``Prepend``
  normaliser); this is probed once per tokenizer.

Chat templates (``chat_template``: ``auto``, the default, for records of chat data, i.e. with
``meta.chat``; ``always``; ``never``), when the tokenizer has one: the record is turned into
chat messages (user turns; each feedback phrase plus its output as one assistant message) and
rendered through the template; the template's text carries no loss except the end-of-turn
token that closes a trained output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coh.data.records import FeedbackRecord, Segment
from coh.data.tokenized import (  # their home: the tokenized/ folder
    TOKEN_COLUMNS,
    TOKENIZE_CONFIG,
    TOKENIZE_FORMAT,
    read_tokenize_config,
    token_features,
    tokenize_config,
    tokenize_config_mismatch,
    tokenizer_fingerprint,
    tokens_batch,
)

__all__ = ["CHAT_TEMPLATE_MODES", "TOKENIZE_CONFIG", "TOKENIZE_FORMAT", "TOKEN_COLUMNS", "RecordTokenizer",
           "TokenizedRecord", "chat_messages", "encode_texts", "leading_space_is_doubled", "read_tokenize_config",
           "token_features", "tokenize_config", "tokenize_config_mismatch", "tokenize_many", "tokenizer_adds_bos",
           "tokenizer_fingerprint", "tokens_batch"]

CHAT_TEMPLATE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class TokenizedRecord:
    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_texts(tokenizer, texts: list[str], backend=None) -> list[list[int]]:
    """Token ids of each text, no special tokens added; through ``backend`` (a Rust tokenizer) if
    given. The one batched encoder of plain text (records here, pretraining text in coh.train)."""
    if not texts:
        return []
    # Each distinct text once: the records of one example share their outputs (p, pn and np all
    # hold the good one), and a text's ids do not depend on the others in the batch.
    unique = list(dict.fromkeys(texts))
    backend = backend or getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: transformers' per-text Python conversion costs as much as
        # the tokenization itself for short segments.
        ids = [e.ids for e in backend.encode_batch(unique, add_special_tokens=False)]
    else:
        ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    if len(unique) == len(texts):
        return ids
    of_text = dict(zip(unique, ids))
    return [of_text[t] for t in texts]  # shared lists: callers copy from them, never change them


def _specials_as_text(tokenizer):
    """A copy of the Rust tokenizer that encodes special-token strings found in data as ordinary
    text: a reply that mentions ``<|endoftext|>`` must not teach the model to stop there."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    return backend


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS first by itself: the model's own convention."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def leading_space_is_doubled(tokenizer) -> bool:
    """True if encoding ``" word"`` alone differs from ``" word"`` in running text, and encoding
    ``"word"`` alone matches it (a tokenizer that prepends a word-start marker to every call)."""
    head, tail = "Answer:", " Hello world"
    joint = encode_texts(tokenizer, [head + tail])[0]
    alone_head, alone_tail, alone_bare = encode_texts(tokenizer, [head, tail, tail[1:]])
    if joint[: len(alone_head)] != alone_head:
        return False
    in_context = joint[len(alone_head) :]
    return alone_tail != in_context and alone_bare == in_context


class RecordTokenizer:
    """Tokenize ``FeedbackRecord`` s with one Hugging Face tokenizer (see the module contract)."""

    def __init__(self, tokenizer, chat_template: str = "auto"):
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no EOS token; CoH closes every output with one. "
                "Set tokenizer.eos_token before building."
            )
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.bos_id: int | None = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
        self.strip_leading_space = leading_space_is_doubled(tokenizer)
        self.text_backend = _specials_as_text(tokenizer)
        if chat_template not in CHAT_TEMPLATE_MODES:
            raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_MODES}, got {chat_template!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "always" and not has_template:
            raise ValueError("chat_template='always', but the tokenizer has no chat template")
        self.chat_template = chat_template if has_template else "never"

    def uses_template(self, record: FeedbackRecord) -> bool:
        """Whether this record goes through the tokenizer's chat template."""
        return self.chat_template == "always" or (self.chat_template == "auto" and bool(record.meta.get("chat")))

    # -- plain CoH text --------------------------------------------------------------------------
    def _pieces(self, segments: Sequence[Segment]) -> list[tuple[str, bool, bool]]:
        """(text, loss, EOS after) pieces to encode: runs of segments with the same loss flag and no
        EOS between them are joined, since a merge inside a run cannot move the mask; the tokenizer
        then sees running text, and is called far fewer times."""
        pieces: list[tuple[str, bool, bool]] = []
        run: list[str] = []
        run_loss = False
        chunk_start = True
        for seg in segments:
            if run and seg.loss != run_loss:
                pieces.append(("".join(run), run_loss, False))
                run = []
            text = seg.text
            if not run and self.strip_leading_space and not chunk_start and text.startswith(" "):
                text = text[1:]
            run.append(text)
            run_loss = seg.loss
            chunk_start = seg.eos
            if seg.eos:
                pieces.append(("".join(run), run_loss, True))
                run = []
        if run:
            pieces.append(("".join(run), run_loss, False))
        return pieces

    def _assemble(
        self, pieces: Iterable[tuple[list[int], bool | list[int], bool]], add_bos: bool = True
    ) -> TokenizedRecord:
        """Concatenate (tokens, loss flag or per-token mask, EOS after) pieces behind an optional BOS."""
        ids: list[int] = []
        mask: list[int] = []
        if add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
            mask.append(0)
        for tokens, loss, eos in pieces:
            ids.extend(tokens)
            mask.extend(loss if isinstance(loss, list) else [int(loss)] * len(tokens))
            if eos:
                ids.append(self.eos_id)
                mask.append(int(loss))
        return TokenizedRecord(ids, mask)

    def batch(self, records: Sequence[FeedbackRecord]) -> list[TokenizedRecord]:
        """Tokenize many records, the plain ones with one batched call (parallel in the Rust backend)."""
        if self.chat_template == "never" or not any(self.uses_template(r) for r in records):
            return self._plain_batch(records)
        plain = iter(self._plain_batch([r for r in records if not self.uses_template(r)]))
        return [self._chat(r) if self.uses_template(r) else next(plain) for r in records]

    def _plain_batch(self, records: Sequence[FeedbackRecord]) -> list[TokenizedRecord]:
        pieces = [self._pieces(r.segments) for r in records]
        encoded = encode_texts(self.tokenizer, [text for ps in pieces for text, _, _ in ps], self.text_backend)
        out = []
        k = 0
        for ps in pieces:
            out.append(self._assemble((encoded[k + i], loss, eos) for i, (_, loss, eos) in enumerate(ps)))
            k += len(ps)
        return out

    def __call__(self, record: FeedbackRecord) -> TokenizedRecord:
        return self.batch([record])[0]

    # -- chat templates ---------------------------------------------------------------------------
    def _chat(self, record: FeedbackRecord) -> TokenizedRecord:
        messages, contents = chat_messages(record.segments)
        sentinels = [f"\x02COH{i}\x03" for i in range(len(messages))]
        try:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": m, "content": s} for m, s in zip(messages, sentinels)], tokenize=False
            )
        except Exception as e:  # jinja2's TemplateError and friends: templates raise what they like
            raise ValueError(
                f"record {record.id}: the tokenizer's chat template refused its messages ({e}). Templates that "
                "need strictly alternating roles or no system turn cannot take pn/np records or system prompts: "
                "use --chat-template never, or feedback types p and n only."
            ) from None
        pieces: list[tuple[str, bool, bool]] = []  # (text, loss, eos inserted after)
        is_template: list[bool] = []
        rest = rendered
        prev_trained = False
        for sentinel, content in zip(sentinels, contents):
            before, found, rest = rest.partition(sentinel)
            if not found:
                raise ValueError(f"record {record.id}: the chat template drops or alters message text")
            template = self._template_text(before, prev_trained)
            pieces.extend(template)
            pieces.extend((seg.text, seg.loss, False) for seg in content)
            is_template.extend([True] * len(template) + [False] * len(content))
            prev_trained = any(seg.loss for seg in content)
        template = self._template_text(rest, prev_trained)
        pieces.extend(template)
        is_template.extend([True] * len(template))
        bos_text = self.tokenizer.bos_token
        add_bos = not (bos_text and rendered.startswith(bos_text))  # the template may write BOS: never two
        specials = [t for t in self.tokenizer.all_special_tokens if t]
        data_has_specials = any(not tpl and any(t in text for t in specials) for (text, _, _), tpl in zip(pieces, is_template))
        joint = None if data_has_specials else self._encode_jointly(pieces)
        if joint is not None:
            return self._assemble([(joint[0], joint[1], False)], add_bos)
        # Piece by piece when a token would straddle a loss boundary or the data holds special-token
        # strings: template text with its special tokens, message text with specials as plain text.
        encoded = [encode_texts(self.tokenizer, [text], None if tpl else self.text_backend)[0] if text else []
                   for (text, _, _), tpl in zip(pieces, is_template)]
        return self._assemble(((e, loss, eos) for e, (_, loss, eos) in zip(encoded, pieces)), add_bos)

    def _encode_jointly(self, pieces: list[tuple[str, bool, bool]]) -> tuple[list[int], list[int]] | None:
        """Tokenize template text and contents as one string (as the model sees it at inference),
        the mask taken from character spans; None if a token would straddle a loss boundary."""
        if any(eos for _, _, eos in pieces):
            return None
        flags: list[int] = []
        for text, loss, _ in pieces:
            flags.extend([int(loss)] * len(text))
        enc = self.tokenizer("".join(t for t, _, _ in pieces), add_special_tokens=False, return_offsets_mapping=True)
        mask = []
        for start, end in enc["offset_mapping"]:
            span = set(flags[start:end]) if end > start else {flags[start] if start < len(flags) else 0}
            if len(span) > 1:
                return None
            mask.append(span.pop())
        return enc["input_ids"], mask

    def _template_text(self, text: str, after_trained_output: bool) -> list[tuple[str, bool, bool]]:
        """Template text between messages; after a trained output its end-of-turn token carries loss."""
        if not after_trained_output:
            return [(text, False, False)] if text else []
        end = _first_special(text, self.tokenizer)
        if end is None:  # the template does not close the turn with a special token: add EOS
            return [("", True, True)] + ([(text, False, False)] if text else [])
        cut = end
        out = [(text[:cut], True, False)]
        if text[cut:]:
            out.append((text[cut:], False, False))
        return out


def _first_special(text: str, tokenizer) -> int | None:
    """End offset of the first special token in ``text`` if only whitespace precedes it."""
    stripped = len(text) - len(text.lstrip())
    for tok in sorted(tokenizer.all_special_tokens + list(getattr(tokenizer, "added_tokens_encoder", {})), key=len,
                      reverse=True):
        if tok and text.startswith(tok, stripped):
            return stripped + len(tok)
    return None


def chat_messages(segments: Sequence[Segment]) -> tuple[list[str], list[list[Segment]]]:
    """Group record segments into chat messages: roles and, per message, its content segments.

    ``marker`` segments (``User:``) are dropped, the template marks roles; a feedback phrase and
    the output after it form one assistant message; ``prompt`` text (quotes) joins the user message.
    """
    roles: list[str] = []
    contents: list[list[Segment]] = []
    for seg in segments:
        text = seg.text.strip() if not seg.loss else seg.text
        if seg.role == "marker":
            continue
        if seg.role in ("system", "user"):
            roles.append(seg.role)
            contents.append([Segment(text.strip(), False, seg.role)])
        elif seg.role == "prompt":
            if not roles or roles[-1] != "user":
                roles.append("user")
                contents.append([])
            sep = "\n\n" if contents[-1] else ""
            contents[-1].append(Segment(sep + text.strip(), False, "prompt"))
        elif seg.role == "feedback":
            roles.append("assistant")
            contents.append([Segment(text.strip(), False, "feedback")])
        else:  # assistant output
            if not roles or roles[-1] != "assistant" or contents[-1][-1].role != "feedback":
                roles.append("assistant")
                contents.append([])
            contents[-1].append(Segment(seg.text if contents[-1] else seg.text.lstrip(), seg.loss, "assistant"))
    return roles, contents


def tokenize_many(records: Sequence[FeedbackRecord], record_tokenizer: RecordTokenizer, batch_size: int = 1000,
                  progress: bool = False) -> list[TokenizedRecord]:
    """Tokenize records in batches of ``batch_size`` (one batched tokenizer call each), same order."""
    from tqdm import tqdm

    out: list[TokenizedRecord] = []
    with tqdm(total=len(records), desc="tokenize", unit=" records", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            out.extend(record_tokenizer.batch(chunk))
            bar.update(len(chunk))
    return out
