import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.folders import EXPERIMENTS, ROOT  # noqa: F401
from tests.support.tiny import write_tiny_npz

sys.path.insert(0, str(ROOT))  # runner.py lives at the top level, beside the package

# Data identities are cached (ablation.data.identity); tests keep that cache in a folder of their own, which every
# process they start inherits, and which goes when they end.
_CACHE = tempfile.mkdtemp(prefix="ablation-test-cache-")
os.environ["ABLATION_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


# ---- the files that take minutes go first

# Most of these wait (on a Slurm cluster, a server, a time limit) more than they compute. pytest-xdist's loadfile
# would hand out the files with the most tests first, leaving these few-test files to one worker at the end while
# the other sat idle (a 30-minute suite); with --no-loadscope-reorder (pyproject.toml) it hands them out in this
# order, and the many short files fill in beside them. Longest first, from --durations (tests/README.md).
LONGEST_FIRST = (
    "tests/slurm/cluster/test_array.py",
    "tests/test_multinode_slurm.py",
    "tests/test_multinode.py",
    "tests/scheduler/test_outages.py",
    "tests/test_tuned_faults.py",
    "tests/test_fault_injection.py",
    "tests/tracking/test_stores.py",
    "tests/engine/test_train.py",
    "tests/test_from_python_notebook.py",
    "tests/scheduler/test_plan.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {ROOT / path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: the rest keep pytest's order


# ---- tests write only into temporary folders: the checkout is the same after the session as before it

_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")


def _checkout_files() -> dict[str, tuple[int, int] | None] | None:
    """Every file git reports in the checkout (changed, untracked or ignored, caches aside) with its size and
    mtime; None outside a git checkout."""
    command = ["git", "status", "--porcelain", "-z", "--ignored=matching", "--untracked-files=all", "--no-renames"]
    try:
        listing = subprocess.run(command, cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files: dict[str, tuple[int, int] | None] = {}
    for entry in filter(None, listing.decode(errors="replace").split("\0")):
        path = entry[3:]
        if any(part in _CACHES or part.endswith(".egg-info") for part in Path(path).parts):
            continue
        stat = (ROOT / path).stat() if (ROOT / path).exists() else None
        files[path] = (stat.st_size, stat.st_mtime_ns) if stat else None
    return files


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_files()


def pytest_sessionfinish(session, exitstatus):
    """A test that wrote into the checkout (a result, a store, a screenshot) fails the session, by name of file."""
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_files()
    if before is None or after is None:
        return
    # A maintainer refreshing the committed screenshot names it (tests/test_mlflow_ui.py): that write is asked for.
    asked = os.environ.get("ABLATION_SCREENSHOT_TO")
    asked = (
        str(Path(asked).resolve().relative_to(ROOT)) if asked and Path(asked).resolve().is_relative_to(ROOT) else None
    )
    written = sorted(path for path, stamp in after.items() if before.get(path, "absent") != stamp and path != asked)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"the tests wrote into the checkout: {', '.join(written[:20])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_stop_requested():
    """A test that requested a stop (ablation.core.stopping) leaves none behind for the next one: the command line
    clears it when it starts, a test calling the package directly would not."""
    yield
    from ablation.core.stopping import reset_stop

    reset_stop()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny-tensor tests: a second OpenMP thread only adds sync cost (~6x slower on a busy 2-core
    box). Used with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_experiment(tmp_path):
    """Write an experiment file from YAML text and return its path."""

    def write(text: str, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """100 train / 40 test real CIFAR-10 images (10 / 4 per class) from the bundled set, as an .npz."""
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


# Session-scoped throwaway PostgreSQL server: `postgres_url` yields make_db(name) -> SQLAlchemy URL.
from tests.support.postgres import postgres_url  # noqa: E402, F401
