"""``coh data``: raw feedback into Chain-of-Hindsight records and token-level loss masks.

Read in this order: ``reading`` (a source and its raw rows; local files through ``io``),
``sources`` (raw rows -> ``FeedbackExample``; the fields they share in ``conversations``),
``render`` (examples -> ``FeedbackRecord`` under feedback phrases, ``phrases``), ``records`` (the
JSONL schema; ``fields`` the original's), ``tokenize`` (records -> token ids and loss mask;
``tokenized`` the folder a build writes them to), ``workers`` (rows to records in worker
processes), ``build`` (the build top to bottom; ``outputs``, ``spill``, ``writing`` what it
writes), ``inspect``; ``config`` and ``command`` the ``coh data`` command.
"""
