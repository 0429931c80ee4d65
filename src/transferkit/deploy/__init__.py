"""transferkit.deploy."""
