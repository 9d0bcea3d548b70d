"""The pruning core: the greedy engine, width allocation, strategies and ``prune()``."""
