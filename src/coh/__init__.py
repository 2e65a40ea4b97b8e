"""Chain of Hindsight: align language models with human feedback turned into text."""

__version__ = "0.1.0"
