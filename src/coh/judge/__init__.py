"""``coh judge``: pairwise human evaluation whose votes become new feedback data. The judges here
are people comparing two outputs; the scoring functions and reward models of ``coh eval`` are
another thing.

The flow, one file per step:

- ``systems``: the systems under comparison (OpenAI-compatible servers such as ``coh serve``,
  optionally conditioned on a feedback phrase, or prepared files of outputs) and the client
  that asks them.
- ``sources``: the comparison set. Prompts plus two or more systems into ``comparisons.jsonl``.
- ``store``: SQLite (WAL, one transaction per write) holding comparisons, voters and votes.
- ``app`` + ``static/``: the voting page (FastAPI): two outputs side by side, random order,
  systems hidden; better / tie / neither, an optional comment.
- ``stats``: win / tie / loss per pair of systems with Wilson intervals, a table and a plot.
- ``export``: votes into preference rows (``prompt``/``chosen``/``rejected``, ``comment``) that
  ``coh data build -s preference:FILE`` reads.
- ``config``: each action's options (a config dataclass per action); ``command``: the
  ``coh judge prepare | serve | results | export`` sub-commands that run them.
"""
