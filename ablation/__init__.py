"""An ablation-study harness for CBAM (Woo et al., ECCV 2018): every ablation axis, the paper's backbones, sweeps
scheduled onto devices and machines, tracked in MLflow, and paper-style tables.

The package is folders by role, each importing only those below it (README, "Where things live"; checked by
tests/test_layout.py): ``core``; ``attention`` and ``data``; ``models``; ``experiment``; ``stats`` and ``tracking``;
``engine``; ``report``; ``sweep``; ``slurm``; and the command line on top (``cli``, ``python -m ablation``, the
installed ``ablation``). Importing the package imports nothing else.
"""
