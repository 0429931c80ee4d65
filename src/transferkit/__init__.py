"""transferkit: which pretrained model should I use, how should I adapt it, how good is it, how do I ship it."""

__version__ = "0.1.0"
