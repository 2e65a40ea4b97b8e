"""``coh compare``: CoH beside conditional SFT, SFT, DPO and the base model, one recipe, one report."""
