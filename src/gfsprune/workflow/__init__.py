"""The command line and its jobs: data, training, pruning runs, comparisons, reports."""
