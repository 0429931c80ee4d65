"""transferkit.heads."""
