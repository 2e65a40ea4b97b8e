"""``coh train``: Chain-of-Hindsight fine-tuning of any Hugging Face causal LM.

Read in this order: ``trainer`` (the loop, top to bottom, and what it calls: ``preflight``,
``setup``, ``data``, ``step``, ``accounting``, ``evaluation``, ``checkpoint``); then the CoH
mechanics: ``packing`` (tokenized records into packed micro-batches that never attend across
records), ``masks`` (random past-token masking, composed with the record boundaries), ``loss``
(next-token loss on output tokens only, normalised per optimizer step). ``config`` holds every
option; ``command`` is ``coh train``'s command line.
"""
