"""expertise: scalable transfer learning with expert models."""

__version__ = "0.1.0"
