"""The experiments shipped with the package, reachable by name: ``ablation sweep demo`` as well as
``ablation sweep experiments/demo.yaml``.

In a checkout they are the files of ``experiments/``; an installed package carries the same files as
``ablation/experiment/bundled/`` (pyproject.toml maps the one folder onto the other, so there is one copy).
"""

from __future__ import annotations

from pathlib import Path

from ablation.core.errors import ConfigError

SUFFIX = ".yaml"


def bundled_folder() -> Path | None:
    """Where the bundled experiments are: the installed copy, else the checkout's ``experiments/``."""
    here = Path(__file__).resolve()
    for folder in (here.with_name("bundled"), here.parents[2] / "experiments"):
        if folder.is_dir() and any(folder.glob(f"*{SUFFIX}")):
            return folder
    return None


def bundled_names() -> tuple[str, ...]:
    folder = bundled_folder()
    return tuple(sorted(p.stem for p in folder.glob(f"*{SUFFIX}"))) if folder else ()


def experiment_path(name_or_path: str | Path) -> Path:
    """The experiment file ``name_or_path`` names: an existing file, or a bundled experiment's name. A folder, or
    neither, is a one-line ConfigError that lists the bundled names."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError("experiment", str(path), "is a folder; pass the path of an experiment file (.yaml)")
    if path.is_file():
        return path
    text = str(name_or_path)
    folder = bundled_folder()
    if folder is not None and text in bundled_names():
        return folder / f"{text}{SUFFIX}"
    names = ", ".join(bundled_names()) or "none here"
    raise ConfigError(
        "experiment", text, f"does not exist; pass the path of an experiment file, or a bundled experiment: {names}"
    )
