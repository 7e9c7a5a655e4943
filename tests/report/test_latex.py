"""A table that breaks LaTeX fails CI: the table.tex of a real sweep whose title and arm descriptions carry all ten of
LaTeX's special characters is compiled with a real pdflatex (Debian's texlive-latex-recommended: booktabs)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ablation import cli
from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from tests.support.tiny import sweep_in

pytestmark = pytest.mark.slow

EXPERIMENT = r"""
name: latex
title: 'Every special: & % $ # _ {{ }} ~ ^ \ and <b>markup</b>'
base:
  model: {{arch: resnet18, width: 0.125, stem: cifar, attention: {{type: cbam, reduction: 4}}}}
  data: {{dataset: npz, root: {npz}}}
  train: {{epochs: 1, batch_size: 25, lr: 0.05}}
grid:
  - model.attention: [{{type: none}}]
    description: 'Plain {{{{base}}}} & 100% $x$ #1 a_b ~c ^d \e'
  - model.attention.order: [channel-first]
    description: 'CBAM_{{{{r=4}}}} & 50% $ # ~ ^ \ <i>'
seeds: [0, 1]
"""
DOCUMENT = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\begin{document}
\input{table.tex}
\end{document}
"""


def test_a_table_with_every_special_character_compiles(tmp_path, tiny_npz, capsys):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        if os.environ.get("ABLATION_REQUIRE_LATEX") == "1":
            pytest.fail("pdflatex is not installed (apt-get install texlive-latex-recommended), and CI requires it")
        pytest.skip("pdflatex is not installed here (apt-get install texlive-latex-recommended)")
    path = tmp_path / "latex.yaml"
    path.write_text(EXPERIMENT.format(npz=tiny_npz))
    prepared = prepare_sweep(load_experiment(path))
    assert {arm.description for arm in prepared.arms} == {
        r"Plain {base} & 100% $x$ #1 a_b ~c ^d \e",
        r"CBAM_{r=4} & 50% $ # ~ ^ \ <i>",
    }
    report, options = sweep_in(tmp_path, prepared)
    assert report.done == 4
    out = tmp_path / "out"
    code = cli.main(
        ["table", str(path), "--tracking-uri", options.tracking_uri, "--out", str(out), "--format", "latex"]
    )
    assert code == 0, capsys.readouterr().err
    tex = (out / "table.tex").read_text()
    assert r"Plain \{base\} \& 100\% \$x\$ \#1 a\_b \textasciitilde{}c \textasciicircum{}d \textbackslash{}e" in tex
    (out / "main.tex").write_text(DOCUMENT)
    done = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (out / "main.pdf").stat().st_size > 1000
    html = (out / "table.html").read_text()
    assert "&lt;b&gt;markup&lt;/b&gt;" in html and "&lt;i&gt;" in html and "<i>" not in html
