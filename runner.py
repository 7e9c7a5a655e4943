#!/usr/bin/env python
"""The command line from a checkout: ``python runner.py sweep experiments/demo.yaml``. The same command as the
installed ``ablation`` and ``python -m ablation``; all of it lives in ``ablation/cli.py``."""

import sys

from ablation.cli import main

if __name__ == "__main__":
    sys.exit(main())
