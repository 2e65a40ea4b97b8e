"""``coh data``: raw feedback into Chain-of-Hindsight records and token-level loss masks.

Read in this order: ``sources`` (raw rows -> ``FeedbackExample``), ``render`` (examples ->
``FeedbackRecord`` under feedback phrases), ``records`` (the JSONL schema), ``tokenize`` (records
-> token ids and loss mask), ``build`` (the command that runs it all).
"""
