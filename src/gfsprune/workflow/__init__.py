"""The command line and its jobs: data, training, pruning runs, comparisons, reports.

Public here, for the README's first example and scripts like it: the bundled data sets and
their loaders (:func:`load_data`, :func:`make_loader`) and training with the paper's recipe
(:class:`TrainConfig`, :func:`fit`). The library (:mod:`gfsprune`) never imports this
package; the rest of it is what the command line runs.
"""

from gfsprune.workflow.data import DataBundle, load_data, make_loader
from gfsprune.workflow.train import TrainConfig, fit

__all__ = ["DataBundle", "TrainConfig", "fit", "load_data", "make_loader"]
