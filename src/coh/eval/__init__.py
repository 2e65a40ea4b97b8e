"""``coh eval``: lm-evaluation-harness (``harness``), the paper's own protocols (``feedback``),
judges (``judges``), confidence intervals (``stats``) and result files (``report``)."""
