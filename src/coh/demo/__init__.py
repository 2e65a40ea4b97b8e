"""``coh demo``: the whole pipeline on a tiny model and a synthetic feedback task (see ``run``)."""
