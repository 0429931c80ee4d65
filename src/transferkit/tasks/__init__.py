"""transferkit.tasks."""
