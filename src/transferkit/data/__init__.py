"""transferkit.data."""
