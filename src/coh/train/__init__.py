"""``coh train``: Chain-of-Hindsight fine-tuning of any Hugging Face causal LM.

Read in this order: ``trainer`` (the loop, top to bottom, and what it calls: ``preflight``,
``setup``, ``data``, ``step``, ``accounting``, ``evaluation``, ``checkpoint``); then the CoH
mechanics: ``packing`` (tokenized records into packed micro-batches that never attend across
records), ``masks`` (random past-token masking, composed with the record boundaries), ``loss``
(next-token loss on output tokens only, normalised per optimizer step). ``config`` holds every
option; ``command`` is ``coh train``'s command line.
"""

import sys
import types


class _TrainPackage(types.ModuleType):
    """This package, callable: ``coh.train(config)`` is ``coh.train.trainer.train(config)``, the
    function ``coh train`` runs (a package attribute of that name would be shadowed by the package
    itself as soon as any ``coh.train.*`` module is imported, hence a callable module)."""

    def __call__(self, config) -> dict:
        """Train as ``config`` (a ``coh.TrainConfig``) says; returns the final evaluation."""
        from coh.train.trainer import train

        return train(config)


sys.modules[__name__].__class__ = _TrainPackage
