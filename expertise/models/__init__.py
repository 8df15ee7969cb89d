"""Models: BiT-style ResNet-v2 backbones and the pool-member contract."""
