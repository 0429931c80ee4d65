"""transferkit.analysis."""
