"""Sub-commands of the ``transferkit`` CLI that are not LightningCLI runs (``data check``, ...)."""
