"""expertise: scalable transfer learning with expert models."""
