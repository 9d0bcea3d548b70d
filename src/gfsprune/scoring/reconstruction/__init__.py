"""The reconstruction objective's math: each channel layer judged by how well its consumers'
outputs are reproduced (the paper's two-layer setting, section 1, applied layer by layer).

- :mod:`~gfsprune.scoring.reconstruction.gram`: the statistics, one streamed pass per layer;
- :mod:`~gfsprune.scoring.reconstruction.problem`: the error as a quadratic form in the items'
  factors, and the least-squares refit of the consumers;
- :mod:`~gfsprune.scoring.reconstruction.paths`: greedy forward selection over all items in
  closed form (scaled or fully corrective).
"""
