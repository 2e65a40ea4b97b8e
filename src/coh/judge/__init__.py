"""``coh judge``: pairwise human evaluation whose votes become new feedback data.

The flow, one file per step:

- ``sources``: the comparison set. Prompts plus two or more systems (OpenAI-compatible servers
  such as ``coh serve``, optionally conditioned on a feedback phrase, or prepared files of
  outputs) into ``comparisons.jsonl``.
- ``store``: SQLite (WAL, one transaction per write) holding comparisons, voters and votes.
- ``app`` + ``static/``: the voting page (FastAPI): two outputs side by side, random order,
  systems hidden; better / tie / neither, an optional comment.
- ``stats``: win / tie / loss per pair of systems with Wilson intervals, a table and a plot.
- ``export``: votes into preference rows (``prompt``/``chosen``/``rejected``, ``comment``) that
  ``coh data build -s preference:FILE`` reads.
- ``command``: the ``coh judge prepare | serve | results | export`` sub-commands.
"""
