"""Epoch checkpoints that resume a job exactly, written durably, and checked before they are trusted.

A checkpoint holds only tensors and plain containers (state dicts, RNG states, the metric history), so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint cannot run code from it.

Writing: to a temporary file, flushed to disk, then renamed over ``last.pt`` after the one it replaces became
``last.previous.pt``. A kill at any moment leaves ``last.pt``, or its predecessor, whole.

Reading (``load_resumable``): a checkpoint is used only if it loads, has this format, belongs to this cell (its
key) and to this cell's MLflow run, and fits the network and optimizer. Anything else (truncated, garbage,
another cell's, a deleted store's run's) is named in one line and moved aside into ``set-aside/`` beside it,
kept for inspection, never deleted and never obeyed; the previous checkpoint is tried next, then a clean start.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ablation.core.faults import armed, kill_point

FORMAT_VERSION = 1
ASIDE = "set-aside"


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".previous" + path.suffix)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` so that a reader (or a crash) never sees a half-written file, keeping the
    checkpoint it replaces as ``previous_path(path)``.

    A write that fails (no space, an I/O error) removes its temporary file and raises the file system's own
    OSError, naming the file: torch reports it as "unexpected pos 811072 vs 810968", which says neither. The
    checkpoints already there are left as they were.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save({"format_version": FORMAT_VERSION, **state}, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:  # a flush's or a close's: the file is ours
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        raise
    kill_point("checkpoint.written")
    if path.exists():
        os.replace(path, previous_path(path))
    kill_point("checkpoint.rotated")
    os.replace(tmp, path)
    _fsync_directory(path.parent)


class _RecordingWriter:
    """The file torch.save writes to, keeping the OSError of a failed write: torch replaces it with its own
    RuntimeError, and the writer's error is the one that says what happened (ENOSPC) and where."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            written = self.file.write(data)
        except OSError as exc:
            self.error = exc if exc.filename is not None else OSError(exc.errno, exc.strerror, self.file.name)
            raise
        if armed("checkpoint.write"):
            self.file.flush()
            kill_point("checkpoint.write")
        return written

    def flush(self) -> None:
        self.file.flush()


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path`` as it is, or None when there is none (for reading a finished cell's network)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise RuntimeError(f"{path}: checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state


def load_resumable(
    path: Path,
    *,
    key: str,
    run_id: str | None,
    apply: Callable[[dict[str, Any]], None],
    map_location: torch.device | str = "cpu",
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """The newest checkpoint of cell ``key`` and MLflow run ``run_id`` (None: any run) at ``path`` or its
    predecessor that loads and that ``apply`` (which restores it into the network, optimizer...) accepts; None
    when there is none. Every candidate that fails is moved aside with one line to ``say``."""
    _remove_stale_temporaries(path)
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        problem = None
        try:
            state = torch.load(candidate, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated zip, garbage, a pickle that weights_only refuses...
            problem = f"does not load ({load_error(exc)})"
        else:
            problem = _mismatch(state, key, run_id)
            if problem is None:
                try:
                    apply(state)
                except Exception as exc:  # shapes that do not fit: the network changed since
                    problem = f"does not fit this cell's network or optimizer ({load_error(exc)})"
        if problem is None:
            if candidate != path:
                os.replace(candidate, path)
                say(f"[checkpoint] resuming from the previous checkpoint (epoch {state.get('epoch')}) of {path.parent}")
            return state
        moved = set_aside(candidate)
        say(f"[checkpoint] {candidate} {problem}; moved to {moved} and not used")
    return None


def set_aside(path: Path) -> Path:
    """Move ``path`` into ``set-aside/`` beside it under a name that records when; returns the new path."""
    folder = path.parent / ASIDE
    folder.mkdir(exist_ok=True)
    target = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(path, target)
    return target


def discard_previous(path: Path) -> None:
    """Drop the predecessor of a finished cell's final checkpoint: only ``last.pt`` is read from then on."""
    with contextlib.suppress(FileNotFoundError):
        previous_path(path).unlink()


def _mismatch(state: Any, key: str, run_id: str | None) -> str | None:
    if not isinstance(state, dict):
        return "is not a checkpoint (not a dictionary)"
    if state.get("format_version") != FORMAT_VERSION:
        return f"has checkpoint format {state.get('format_version')!r}, not {FORMAT_VERSION}"
    missing = [k for k in ("config_hash", "epoch", "model", "optimizer", "history") if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    if state["config_hash"] != key:
        return f"belongs to cell {state['config_hash']}, not to this cell ({key})"
    if run_id is not None and state.get("run_id") not in (None, run_id):
        return f"belongs to MLflow run {state['run_id']}, not to this cell's run {run_id}"
    return None


def load_error(exc: BaseException) -> str:
    """Why a checkpoint did not load, in one line, without torch's advice to load with weights_only=False (which
    would run whatever the file holds)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if "weights_only" in text:
        line = "it holds objects that a safe load refuses"
    return line[:300]


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of writers that died mid-write (a live writer's is its own process's, never this one's)."""
    for tmp in path.parent.glob(path.name + ".tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); file systems that cannot fsync a directory are left as they are."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cell_checkpoint(checkpoint_dir: Path, experiment: str, key: str) -> Path:
    """Where a sweep keeps a cell's last epoch checkpoint: ``<checkpoint_dir>/<experiment>/<cell key>/last.pt``
    (the folder every worker of the sweep shares; Grad-CAM reads the trained networks from there too)."""
    return Path(checkpoint_dir) / experiment / key / "last.pt"
