"""transferkit.report."""
