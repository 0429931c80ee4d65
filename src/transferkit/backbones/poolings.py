"""Pooling names of backbone features (a torch-free module: option classes validate against it at import)."""

#: how a backbone's token features become one vector per image
POOLINGS = ("cls", "mean", "last", "cls+mean")
