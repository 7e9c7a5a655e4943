"""``python -m ablation``: the command line (``ablation.cli``)."""

import sys

from ablation.cli import main

sys.exit(main())
