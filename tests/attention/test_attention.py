"""The attention package (ablation/attention/__init__.py): importing it, parsing an attention config and asking
its placement import no torch (config errors come before the heavy imports); building a module loads it."""

import subprocess
import sys

from tests.support.folders import ROOT

PROBE = """
import sys
import ablation.attention as attention
options = attention.parse_attention({"type": "cbam", "kernel_size": 3})
print(attention.placement(options), "torch" in sys.modules)
module = attention.build_attention(options, 64)
print(type(module).__name__, "torch" in sys.modules)
"""


def test_the_registry_loads_torch_only_to_build_a_module():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["block False", "CBAM True"]
