"""``runner.py profile``: params and GMACs of every arm, beside the paper's printed numbers, without training."""

from __future__ import annotations

import pandas as pd

from ablation.experiment.grid import Arm, build_network
from ablation.experiment.paper import SOURCES
from ablation.models.measure import measure
from ablation.models.registry import CUSTOM, backbone
from ablation.report.formats import PROFILE_FORMATS

PARAMS_TOLERANCE_M = 0.01  # the paper prints params to 0.01M
GMACS_TOLERANCE = 0.005  # relative; the paper prints 3-4 significant digits


def profile_arms(arms: list[Arm]) -> pd.DataFrame:
    """One row per arm: description, arch, attention, layout, params, gmacs, and the paper's numbers."""
    rows = []
    for arm in arms:
        model = arm.config.model
        params, macs = measure(lambda arm=arm: build_network(arm), arm.data.image_size)
        gmacs = macs / 1e9
        row = arm.paper_row
        rows.append(
            {
                "description": arm.description,
                "arch": model.target if model.arch == CUSTOM else model.arch,
                "width": "n/a" if model.arch == CUSTOM else model.width,  # a user's network has its own options
                "attention": model.attention.type,
                "layout": model.layout if backbone(model.arch).bottleneck else "n/a",
                "image_size": arm.data.image_size,
                "params": params,
                "gmacs": round(gmacs, 4),
                "paper_params_m": row.params_m if row else None,
                "paper_gflops": row.gflops if row else None,
                # Where the paper's numbers come from (experiment.paper.SOURCES): none is checked against the PDF.
                "paper_params_source": row.source("params_m") if row and row.params_m else "",
                "paper_gflops_source": row.source("gflops") if row and row.gflops else "",
                "note": _mismatch_note(arm, params, gmacs),
            }
        )
    return pd.DataFrame(rows)


def _mismatch_note(arm: Arm, params: int, gmacs: float) -> str:
    """Why a measured number differs from the paper's printed one ('' when both agree or there is no row)."""
    row = arm.paper_row
    if row is None:
        return ""
    reasons = []
    if row.params_m is not None and abs(params / 1e6 - row.params_m) > PARAMS_TOLERANCE_M:
        reasons.append(f"params differ: {row.note or 'unexplained'}")
    if row.gflops is not None and abs(gmacs - row.gflops) > GMACS_TOLERANCE * row.gflops:
        model = arm.config.model
        if arm.data.image_size != 224:
            why = f"measured at {arm.data.image_size} px, the paper at 224"
        elif model.layout == "v1.5" and backbone(model.arch).bottleneck:
            why = "the paper counts the v1 layout (stride on the first 1x1); compare with --set model.layout=v1"
        else:
            why = row.note or "unexplained"
        reasons.append(f"GMACs differ: {why}")
    elif row.note and not reasons:
        reasons.append(row.note)
    return "; ".join(dict.fromkeys(reasons))


FORMATS = PROFILE_FORMATS  # what ``render`` draws (``runner.py profile --format``), the default first


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The profile as an aligned text table, CSV or Markdown; the paper's numbers carry their source's mark, and a
    footnote says what the marks mean."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.copy()

    def marked(value, source: str, fmt: str, unit: str = "") -> str:
        # A column the paper has no number for holds None (not NaN) throughout: format only what is there.
        if value is None or pd.isna(value):
            return ""
        return format(value, fmt) + unit + (SOURCES[source][0] if source else "")

    shown["params"] = shown["params"].map(lambda p: f"{p / 1e6:.2f}M ({p:,})")
    shown["paper_params_m"] = [
        marked(p, s, ".2f", "M") for p, s in zip(frame["paper_params_m"], frame["paper_params_source"], strict=True)
    ]
    shown["paper_gflops"] = [
        marked(g, s, ".3f") for g, s in zip(frame["paper_gflops"], frame["paper_gflops_source"], strict=True)
    ]
    shown["gmacs"] = shown["gmacs"].map(lambda g: f"{g:.3f}")
    shown = shown.drop(columns=["paper_params_source", "paper_gflops_source"])
    used = set(frame["paper_params_source"]) | set(frame["paper_gflops_source"])
    footnote = "; ".join(f"{mark} {text}" for key, (mark, text) in SOURCES.items() if key in used)
    footnote = f"\nPaper numbers: {footnote}.\n" if footnote else ""
    if fmt == "md":
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join([header, rule, *lines]) + "\n" + footnote
    return shown.to_string(index=False) + "\n" + footnote
