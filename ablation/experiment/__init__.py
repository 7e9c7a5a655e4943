"""What an experiment is and what it expands to, checked before anything runs.

``schema`` (the run config and experiment files, ``--set``, the config hash), ``tune`` (the ``tune:`` and adaptive
``seeds:`` sections), ``bundled`` (the experiments shipped with the package, by name), ``describe`` (an arm's label),
``paper`` (the paper's printed numbers), ``search_space`` (a tune section as Optuna distributions), ``grid`` (an
experiment -> arms -> cells, and a planned cell from its spec) and ``prepared`` (a sweep validated, measured and its
data checked: everything before a store is touched).

May import ``core``, ``attention``, ``models`` and ``data`` (their schemas and registries; their torch code only
inside the functions that build or measure a network). Importing it imports no torch: a mistake in an experiment is
one line in well under a second.
"""
