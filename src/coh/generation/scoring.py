"""One forward pass over a batch of prompts: prompt logprobs (lm-evaluation-harness's
loglikelihood requests) and the token of single greedy steps, without a ``generate`` call. Also
the tensor helpers the sliced generation shares: left padding and (token, logprob, top
alternatives) entries.

Logprobs are the model's own distribution (log-softmax of the logits, before temperature and
top-p), as OpenAI and vLLM report them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from coh.generation.requests import Job, TokenLogprob

if TYPE_CHECKING:
    from coh.generation.engine import Engine


def left_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids, each [len(seqs), longest]."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def token_logprobs(lp: torch.Tensor, targets: Sequence[int], top: int) -> list[TokenLogprob]:
    """(token, logprob, top alternatives) for each of the ``n`` positions of ``lp`` (log-softmax,
    [n, vocab]) and its target token; ``top`` alternatives, most likely first (none for 0)."""
    if not len(targets):
        return []
    t = torch.tensor(list(targets), device=lp.device)
    chosen = lp.gather(1, t[:, None])[:, 0].tolist()
    if top > 0:
        values, indices = lp.topk(min(top, lp.shape[-1]), dim=-1)
        alts = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        alts = [[] for _ in targets]
    return [(int(tok), c, a) for tok, c, a in zip(targets, chosen, alts)]


def score_chunk(engine: Engine, chunk: list[tuple[Job, int]]) -> None:
    """One forward pass over the requests ``(job, index)`` of ``chunk``: fills their prompt
    logprobs and takes the token of single greedy steps, ending those requests' forward part."""
    requests = [j.requests[i] for j, i in chunk]
    ids, mask, positions = left_padded([r.ids for r in requests], engine.pad_id, engine.device)
    all_positions = any(r.prompt_logprobs is not None for r in requests)
    with torch.inference_mode():
        logits = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                              logits_to_keep=0 if all_positions else 1).logits
    for b, ((job, i), request) in enumerate(zip(chunk, requests)):
        res = job.results[i]
        n = len(request.ids)
        if request.prompt_logprobs is not None:
            lp = logits[b, -n:].float().log_softmax(-1)
            res.prompt_logprobs = [None, *token_logprobs(lp[:-1], request.ids[1:], request.prompt_logprobs)]
            last = lp[-1:]
        else:
            last = logits[b, -1:].float().log_softmax(-1)
        if request.one_greedy_step:
            token = int(last[0].argmax())
            # The decoding ends the request's one part (max_new_tokens is 1), EOS or not.
            engine.decoding(job, i).add(token, token_logprobs(last, [token], request.logprobs or 0)[0])
        else:
            job.part_done(i)
