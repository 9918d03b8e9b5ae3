"""How many frames fit? Peak device memory of the aggregator or model from a forward pass on
fake tensors, without a GPU: `python -m profiling.estimate --help`."""
