"""Running a notebook of notebooks/ headless, as a reader would top to bottom, and reading what its cells showed."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.support.folders import ROOT


def execute(name: str, working_folder: Path = ROOT, timeout_s: int = 300) -> dict[str, list[dict]]:
    """Run ``notebooks/<name>`` in a fresh kernel working in ``working_folder`` (parameters come from the environment
    the kernel inherits); fail listing every error; return each tagged cell's outputs."""
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells), f"{name} is stored with outputs"
    # allow_errors=True so that every error is listed below rather than the first one raised.
    NotebookClient(
        notebook,
        timeout=timeout_s,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(working_folder)}},
    ).execute()
    errors = [
        f"{cell.metadata.get('tags')}: {out.ename}: {out.evalue}"
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors, errors
    return {cell.metadata["tags"][0]: cell.outputs for cell in notebook.cells if cell.metadata.get("tags")}


def text(outputs: list[dict], mime: str = "text/plain") -> str:
    """Everything a cell printed (streams) and displayed as ``mime``."""
    parts = [out.text for out in outputs if out.output_type == "stream"]
    parts += [out.data[mime] for out in outputs if mime in out.get("data", {})]
    return "\n".join(parts)


def images(outputs: list[dict]) -> list[dict]:
    """The PNG images a cell displayed."""
    return [out for out in outputs if "image/png" in out.get("data", {})]
