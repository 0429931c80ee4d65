"""transferkit.select."""
