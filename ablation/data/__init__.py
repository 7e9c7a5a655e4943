"""The datasets: one registry entry per dataset (``registry``: what it is, how it is read and normalised; a user's
own registered the same way), the ``data`` section of a run config (``config``), what a dataset is without loading
it and its identity (``catalog``, ``identity``), reading it (``sources``), the in-memory and ImageNet loaders a job
trains with (``memory``, ``loaders``) and the training set's fixed holdout (``holdout``).

May import ``core`` only. Importing it imports no torch: the registry names its functions by import path.
"""
