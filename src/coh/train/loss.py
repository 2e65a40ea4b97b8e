"""The Chain-of-Hindsight objective: next-token loss on output tokens only.

``target_loss`` returns the *sum* of the token losses of a packed micro-batch and the number
of target tokens; the trainer divides by the target tokens of the whole optimizer step (all
micro-batches of the step, all processes), so the update does not depend on gradient
accumulation or the number of GPUs. Logits are computed only at the positions that predict a
target (transformers' ``logits_to_keep`` with a boolean mask): prompts and feedback phrases cost
no vocabulary projection. Softmax math is fp32 whatever the model's dtype.

With ``chunk`` (positions), the output layer is swapped for ``TargetHead`` during the forward:
it computes logits and losses ``chunk`` target positions at a time and recomputes each chunk's
logits in backward, so at most ``chunk x vocab`` logits exist at once (a 150k vocabulary and 8k
targets would otherwise hold several GB of fp32 logits). The swap happens inside the model's own
forward, so DDP's and FSDP's hooks run as usual.

``kernel="liger"`` swaps in ``LigerTargetHead`` instead: Liger's fused linear cross-entropy (Triton,
GPUs only), which never holds more than one chunk of logits either and returns the same per-target
NLL and argmax hits (``check_loss_kernel`` refuses it on a CPU or without liger-kernel).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Config attributes of models that transform logits after the output layer (Gemma's softcapping,
# Cohere's and Granite's scaling): their losses must see real logits, so they are not chunked.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass
class TargetLoss:
    """Sum of the negative log-likelihoods of the targets (with gradient), their count, how many
    the model's argmax got right (token accuracy), and the summed NLL of each record in packing
    order (detached, float64; records without targets get 0)."""

    loss_sum: torch.Tensor
    targets: int
    correct: int
    per_record: torch.Tensor


def predicting_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a target: ``target_mask`` shifted left by one."""
    keep = torch.zeros_like(target_mask)
    keep[:, :-1] = target_mask[:, 1:]
    return keep


def _nll_and_hits(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, 2): the NLL of each target (fp32) and whether the argmax hit it, from hidden states (n, H)."""
    logits = head(hidden).float()
    nll = F.cross_entropy(logits, targets, reduction="none")
    return torch.stack([nll, (logits.detach().argmax(-1) == targets).float()], -1)


class TargetHead(torch.nn.Module):
    """Stands in for the output layer during one forward: maps the hidden states of the predicting
    positions (…, n, H) to (1, n, 2) = [NLL, argmax hit] per target, ``chunk`` positions at a time,
    each chunk's logits recomputed in backward (activation checkpointing) instead of kept."""

    def __init__(self, head: torch.nn.Module, targets: torch.Tensor, chunk: int):
        super().__init__()
        self.head, self.targets, self.chunk = head, targets, chunk

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if hidden.shape[0] <= self.chunk:  # one chunk: nothing to save by recomputing
            return _nll_and_hits(self.head, hidden, self.targets)[None]
        parts = [checkpoint(_nll_and_hits, self.head, hidden[i : i + self.chunk], self.targets[i : i + self.chunk],
                            use_reentrant=False) for i in range(0, hidden.shape[0], self.chunk)]
        return torch.cat(parts)[None]


class LigerTargetHead(torch.nn.Module):
    """``TargetHead``'s contract through Liger's fused linear cross-entropy: hidden states of the
    predicting positions (…, n, H) to (1, n, 2) = [NLL (fp32), argmax hit] per target. Per-target
    losses (``reduction="none"``), so per-record sums and token accuracy stay exact."""

    def __init__(self, head: torch.nn.Module, targets: torch.Tensor):
        super().__init__()
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        self.head, self.targets = head, targets
        # fp32 accumulation of the weight gradient over the kernel's chunks, as the chunked loss has it
        self.loss = LigerFusedLinearCrossEntropyLoss(reduction="none", return_token_accuracy=True,
                                                     accum_dtype=torch.float32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.reshape(-1, hidden.shape[-1])
        # One dtype for the kernel, chosen here rather than by autocast inside it: the autocast
        # dtype (bf16 compute over fp32 weights) if on, else the hidden states' (FSDP's bf16
        # parameters, or fp32). Gradients reach the fp32 weight and hidden states through the casts.
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        bias = getattr(self.head, "bias", None)
        with torch.autocast(device, enabled=False):
            out = self.loss(self.head.weight.to(dtype), hidden.to(dtype), self.targets,
                            None if bias is None else bias.to(dtype))
        return torch.stack([out.loss.float(), out.token_accuracy.detach().float()], -1)[None]


def check_loss_kernel(kernel: str, device: torch.device) -> None:
    """Refuse a loss kernel this machine cannot run, before any model is loaded: ``ValueError``."""
    if kernel != "liger":
        return
    if device.type != "cuda":
        raise ValueError("loss_kernel liger runs on GPUs only (Liger's kernels are Triton, CUDA): use "
                         "--loss-kernel chunked on this device")
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise ValueError("loss_kernel liger needs the liger-kernel package: pip install liger-kernel (or "
                         "chain-of-hindsight[liger]), or use --loss-kernel chunked")


@contextlib.contextmanager
def _output_layer(model: torch.nn.Module, replacement: torch.nn.Module | None):
    """Swap the (unwrapped) model's output layer for ``replacement`` for the duration."""
    inner = getattr(model, "module", model)  # DDP keeps the model in .module
    if replacement is None:
        yield
        return
    original = inner.get_output_embeddings()
    inner.set_output_embeddings(replacement)
    try:
        yield
    finally:
        inner.set_output_embeddings(original)


def chunkable(model: torch.nn.Module) -> bool:
    """Whether the model's loss may be chunked: its logits are the output layer's, untransformed."""
    config = getattr(model, "module", model).config
    return not any(getattr(config, name, None) for name in LOGIT_TRANSFORMS)


def target_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], attention_mask: object = None,
                chunk: int | None = None, kernel: str = "chunked") -> TargetLoss:
    """Loss of one packed micro-batch (see ``coh.train.packing.collate_packed``, either layout).

    ``attention_mask``: None (record boundaries come from ``position_ids``) or a prepared 4D mask
    / flex ``BlockMask`` (random past-token masking composed with the boundaries). ``chunk``:
    target positions per slice of the vocabulary projection (None: all at once); ignored for
    models that transform logits after the output layer (see ``chunkable``). ``kernel``: chunked
    (the above) or liger (``LigerTargetHead``; such models are refused there).
    """
    target_mask = batch["target_mask"]
    per_record = torch.zeros(int(batch["record_index"].max()) + 1, dtype=torch.float64)
    targets = batch["input_ids"][target_mask]
    if targets.numel() == 0:
        # A real forward with a zero loss: every process of a DDP / FSDP step runs the same
        # collectives, and every parameter takes part in the graph.
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
        return TargetLoss(out.logits.float().sum() * 0.0, 0, 0, per_record)
    head = None
    output_layer = getattr(model, "module", model).get_output_embeddings()
    if kernel == "liger":
        if not chunkable(model):
            raise ValueError("loss_kernel liger needs the output layer's logits untransformed; this model "
                             f"transforms them ({', '.join(LOGIT_TRANSFORMS)}): use loss_kernel chunked")
        head = LigerTargetHead(output_layer, targets)
    elif chunk is not None and chunkable(model):
        head = TargetHead(output_layer, targets, chunk)
    with _output_layer(model, head):
        out = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=attention_mask,
            logits_to_keep=predicting_positions(target_mask),
            use_cache=False,
        )
    if head is not None:  # the "logits" are already [NLL, hit] per target
        per_target = out.logits.reshape(-1, 2)
        nll, correct = per_target[:, 0], int(per_target[:, 1].detach().sum())
    else:
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
        nll = F.cross_entropy(logits, targets, reduction="none")
        correct = int((logits.detach().argmax(-1) == targets).sum())
    per_record.index_add_(0, batch["record_index"][target_mask].cpu(), nll.detach().double().cpu())
    return TargetLoss(nll.sum(), int(targets.numel()), correct, per_record)
