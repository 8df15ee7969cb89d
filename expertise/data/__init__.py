"""Data: the label hierarchy, the embedded procedural world, upstream datasets and downstream tasks."""
