"""CoH records as a TRL ``SFTTrainer`` dataset: TRL's pre-tokenized format, ``input_ids`` and
``completion_mask``, with our loss mask as the completion mask.

TRL (1.x) takes a dataset that already has ``input_ids`` as tokenized: it neither tokenizes nor
adds special tokens, and with ``SFTConfig(completion_only_loss=True)`` it turns ``completion_mask``
into ``labels`` (``-100`` where the mask is 0) before its collator pads them. Our ``loss_mask[i]``
marks token ``i`` as a target predicted from the tokens before it, which is what a label at ``i``
means to a Hugging Face causal LM (it shifts labels by one), so the mask goes over unchanged:
outputs and the EOS closing each one train, prompts, feedback phrases and shared context do not.

Two TRL settings matter (``to_trl_dataset`` cannot set them for you):

- ``completion_only_loss=True``: TRL's default (None) applies the mask only to datasets with
  ``prompt`` and ``completion`` columns; without it every token would be trained on.
- ``max_length``: TRL cuts longer sequences (default 1024, from the start). Give
  ``SFTConfig(max_length=None)`` or at least the longest record (``max_length`` here reports or
  applies the trainer's overlong policy first); a CoH ``pn`` record cut mid-way loses its second output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from coh.data.records import FeedbackRecord

TRL_COLUMNS = ("input_ids", "completion_mask")


def to_trl_dataset(records: Sequence[FeedbackRecord] | str | Path, tokenizer, *, mode: str = "coh",
                   chat_template: str = "auto", max_length: int | None = None, overlong: str = "error",
                   split: str = "train"):
    """A ``datasets.Dataset`` for TRL's ``SFTTrainer``, one row per record: ``input_ids`` (int32)
    and ``completion_mask`` (int8; 1 = the token is trained on), plus ``id``, ``source`` and
    ``feedback`` (TRL drops columns its model does not take).

    ``records``: CoH records, or a ``coh data build`` folder (its ``{split}.jsonl``) or records
    file (ours or the original's ``fields`` format). ``tokenizer``: a Hugging Face tokenizer or
    its folder / hub id. ``mode``: the training mode's records (``coh``, ``conditional-sft``,
    ``sft``; as ``coh train --mode``). ``chat_template``: as ``coh data build --chat-template``.
    ``max_length``: apply ``coh train``'s overlong policy (``error``, ``split`` or ``skip``) at
    that many tokens; None keeps every record whole. The ids and mask are exactly those
    ``coh train`` trains on (``coh.data.tokenize.RecordTokenizer``, ``coh.train.data.for_mode``)."""
    import datasets

    from coh.data.tokenize import RecordTokenizer
    from coh.train.data import for_mode, read_training_records, records_file

    if isinstance(records, (str, Path)):
        records = read_training_records(records_file(records, split, "records"))
    if isinstance(tokenizer, (str, Path)):
        from coh.models import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer))
    from coh.train.config import MODES

    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    records = list(records)
    shaped = for_mode(records, mode)
    if not shaped:
        raise ValueError(f"no records to convert (mode {mode!r} kept none of {len(records)})")
    tokenized = RecordTokenizer(tokenizer, chat_template=chat_template).batch(shaped)
    ids, masks = [t.input_ids for t in tokenized], [t.loss_mask for t in tokenized]
    origin = list(range(len(shaped)))
    if max_length is not None:
        from coh.train.packing import fit_records

        fitted = fit_records(ids, masks, max_length, overlong)
        ids, masks, origin = fitted.input_ids, fitted.loss_mask, fitted.origin
    features = datasets.Features({
        "id": datasets.Value("string"), "source": datasets.Value("string"), "feedback": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "completion_mask": datasets.List(datasets.Value("int8")),
    })
    return datasets.Dataset.from_dict({
        "id": [shaped[k].id for k in origin], "source": [shaped[k].source for k in origin],
        "feedback": [shaped[k].feedback for k in origin], "input_ids": ids, "completion_mask": masks,
    }, features=features)
