"""Training the bundled tiny pair (``minedraft train-tiny``, :mod:`minedraft.train_tiny`): its data, its
models and the training loop."""
