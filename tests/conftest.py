import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
sys.path.insert(0, str(ROOT))  # runner.py lives at the top level, beside the package


@pytest.fixture
def write_experiment(tmp_path):
    """Write an experiment file from YAML text and return its path."""

    def write(text: str, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write
