"""transferkit.probe."""
