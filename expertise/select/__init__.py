"""Selection: score and rank a library's members for a downstream task, cheaply.

``proxies`` holds the scoring functions ``(features [N, D], labels [N]) -> float`` (higher is
better) that stand in for fine-tuning each member; strategies built on them rank a pool.
"""
