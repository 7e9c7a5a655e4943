"""The paper's printed numbers (Woo et al., ECCV 2018, Tables 1-5), and which configs they belong to.

A row matches an arm when the arm builds the same network the paper's row describes (architecture, width,
attention and its options, ImageNet stem, 1000 classes). Numbers are printed as the paper prints them, even
where they disagree with each other (Tables 1-3 list 25.92M params for a reduction-16 channel MLP on ResNet-50,
which adds 2.53M: Table 4 says 28.09M); ``note`` says so instead of correcting anything silently.

Every number says where it came from (``PaperRow.sources``, ``SOURCES``), and the tables and the profile mark it
and say so in a footnote, because no copy of the paper's PDF was reachable here to check any of them against:

- transcribed: from the project's specification notes (kept outside this repository, so the printed footnote
  does not name them), which were themselves transcribed from memory of the paper and two blog reproductions;
  most numbers.
- recalled: not written in any source here; recalled from the paper. Table 5's SE / CBAM params and all of its
  GFLOPs (they agree with what this project measures for attention after every depthwise and pointwise conv,
  ``ablation.models.mobilenet``, which is not a confirmation of the printed numbers).
- disputed: readers recall the number two ways. Table 3's first row reads "channel (SE-like, avg & max)" at
  22.80 / 6.52 (as Table 1's avg & max arm) to some and "ResNet50 + channel (SE)" at 23.14 / 6.70 (the avg-pool
  arm of Tables 1 and 4) to others; the row matches the avg & max arm and shows both readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ablation.attention.registry import parse_attention

TABLE_TITLES = {
    "table1": "Table 1: channel attention pooling (ResNet-50, ImageNet-1K)",
    "table2": "Table 2: spatial attention descriptor and kernel (ResNet-50, ImageNet-1K)",
    "table3": "Table 3: arrangement of channel and spatial attention (ResNet-50, ImageNet-1K)",
    "table4": "Table 4: backbones, plain / +SE / +CBAM (ImageNet-1K)",
    "table5": "Table 5: MobileNet, plain / +SE / +CBAM (ImageNet-1K)",
}

TABLE13_PARAMS_NOTE = (
    "paper's Tables 1-3 params/GFLOPs disagree with its Table 4 (the r=16 MLP adds 2.53M params to ResNet-50)"
)

# Where a printed number comes from: (mark beside the number, footnote). Nothing here was checked against the PDF.
SOURCES = {
    "transcribed": (
        "†",
        "transcribed from the project's notes on the paper, themselves written from memory of it and two blog "
        "reproductions; "
        "not checked against the PDF",
    ),
    "recalled": ("‡", "recalled from the paper, written in no source here; unverified"),
    "disputed": ("§", "disputed: read two ways by different readers of the paper; both readings shown"),
}
FIELDS = ("top1", "top5", "params_m", "gflops")


@dataclass(frozen=True)
class PaperRow:
    table: str
    label: str
    arch: str
    attention: dict[str, Any]
    top1: float
    top5: float
    params_m: float | None = None
    gflops: float | None = None
    width: float = 1.0
    # Attention options the paper does not pin down (the arm matches whatever they are).
    free: tuple[str, ...] = ()
    note: str = ""
    baseline: bool = False
    # Where each number comes from (a key of SOURCES), per field; fields not named are "transcribed".
    sources: tuple[tuple[str, str], ...] = ()
    # A disputed row's other reading, e.g. {"top1": 23.14, "top5": 6.70} and who reads it so.
    other_reading: tuple[tuple[str, float], ...] = ()
    other_label: str = ""

    def source(self, field: str) -> str:
        return dict(self.sources).get(field, "transcribed")

    def shown(self, field: str, fmt: str, unit: str = "") -> str:
        """A printed number as a table shows it: formatted, the other reading of a disputed one beside it, and the
        mark of its source ("-" when the paper prints none)."""
        value = getattr(self, field)
        if value is None:
            return "-"
        text = format(value, fmt) + unit
        other = dict(self.other_reading).get(field)
        if other is not None:
            text += f" or {format(other, fmt)}{unit}"
        return text + SOURCES[self.source(field)][0]

    def matches(self, arch: str, width: float, attention: dict[str, Any], stem: str, num_classes: int) -> bool:
        if (arch, width, stem, num_classes) != (self.arch, self.width, "imagenet", 1000):
            return False
        expected = parse_attention(self.attention).model_dump()
        if attention.get("type") != expected["type"]:
            return False
        return all(attention.get(k) == v for k, v in expected.items() if k not in self.free)


NONE: dict[str, Any] = {"type": "none"}
SE: dict[str, Any] = {"type": "se"}
CBAM: dict[str, Any] = {"type": "cbam"}


def _cbam(**options: Any) -> dict[str, Any]:
    return {"type": "cbam", **options}


_ROWS: list[PaperRow] = [
    # Table 1: channel attention only (order channel-only), pooling varied.
    PaperRow("table1", "ResNet50 (baseline)", "resnet50", NONE, 24.56, 7.50, 25.56, 3.86, baseline=True),
    PaperRow(
        "table1",
        "ResNet50 + AvgPool (SE-like)",
        "resnet50",
        _cbam(channel_pool=["avg"], order="channel-only"),
        23.14,
        6.70,
        25.92,
        3.94,
        note=TABLE13_PARAMS_NOTE,
    ),
    PaperRow(
        "table1",
        "ResNet50 + MaxPool",
        "resnet50",
        _cbam(channel_pool=["max"], order="channel-only"),
        23.20,
        6.83,
        25.92,
        3.94,
        note=TABLE13_PARAMS_NOTE,
    ),
    PaperRow(
        "table1",
        "ResNet50 + AvgPool & MaxPool",
        "resnet50",
        _cbam(order="channel-only"),
        22.80,
        6.52,
        25.92,
        4.02,
        note=TABLE13_PARAMS_NOTE,
    ),
    # Table 2: spatial descriptor and kernel, after the avg & max channel gate.
    PaperRow(
        "table2",
        "ResNet50 + channel + spatial (1x1 conv, k=3)",
        "resnet50",
        _cbam(spatial="conv", kernel_size=3),
        22.96,
        6.64,
    ),
    PaperRow(
        "table2",
        "ResNet50 + channel + spatial (1x1 conv, k=7)",
        "resnet50",
        _cbam(spatial="conv", kernel_size=7),
        22.90,
        6.47,
    ),
    PaperRow("table2", "ResNet50 + channel + spatial (avg & max, k=3)", "resnet50", _cbam(kernel_size=3), 22.68, 6.41),
    PaperRow("table2", "ResNet50 + channel + spatial (avg & max, k=7)", "resnet50", _cbam(kernel_size=7), 22.66, 6.31),
    # Table 3: arrangement.
    PaperRow(
        "table3",
        "ResNet50 + channel (SE-like, avg & max)",
        "resnet50",
        _cbam(order="channel-only"),
        22.80,
        6.52,
        baseline=True,
        sources=(("top1", "disputed"), ("top5", "disputed")),
        other_reading=(("top1", 23.14), ("top5", 6.70)),
        other_label="ResNet50 + channel (SE), the avg-pool arm of Tables 1 and 4",
        note="disputed row: also read as 'ResNet50 + channel (SE)' at 23.14 / 6.70",
    ),
    PaperRow("table3", "ResNet50 + channel + spatial", "resnet50", _cbam(order="channel-first"), 22.66, 6.31),
    PaperRow("table3", "ResNet50 + spatial + channel", "resnet50", _cbam(order="spatial-first"), 22.78, 6.42),
    PaperRow(
        "table3",
        "ResNet50 + channel & spatial in parallel",
        "resnet50",
        _cbam(order="parallel"),
        22.95,
        6.59,
        free=("parallel_combine",),
        note="the paper does not say how parallel maps are combined",
    ),
]

# Table 4: (label, arch, width, [(params M, GFLOPs, top-1, top-5) for plain, SE, CBAM]).
_TABLE4 = [
    (
        "ResNet18",
        "resnet18",
        1.0,
        [(11.69, 1.814, 29.60, 10.55), (11.78, 1.814, 29.41, 10.22), (11.78, 1.815, 29.27, 10.09)],
    ),
    (
        "ResNet34",
        "resnet34",
        1.0,
        [(21.80, 3.664, 26.69, 8.60), (21.96, 3.664, 26.13, 8.35), (21.96, 3.665, 25.99, 8.24)],
    ),
    (
        "ResNet50",
        "resnet50",
        1.0,
        [(25.56, 3.858, 24.56, 7.50), (28.09, 3.860, 23.14, 6.70), (28.09, 3.864, 22.66, 6.31)],
    ),
    (
        "ResNet101",
        "resnet101",
        1.0,
        [(44.55, 7.570, 23.38, 6.88), (49.33, 7.575, 22.35, 6.19), (49.33, 7.581, 21.51, 5.69)],
    ),
    (
        "WideResNet18 (widen=1.5)",
        "resnet18",
        1.5,
        [(25.88, 3.866, 26.85, 8.88), (26.07, 3.867, 26.21, 8.47), (26.08, 3.868, 26.10, 8.43)],
    ),
    (
        "WideResNet18 (widen=2.0)",
        "resnet18",
        2.0,
        [(45.62, 6.696, 25.63, 8.20), (45.97, 6.696, 24.93, 7.65), (45.97, 6.697, 24.84, 7.63)],
    ),
    (
        "ResNeXt50 (32x4d)",
        "resnext50_32x4d",
        1.0,
        [(25.03, 3.768, 22.85, 6.48), (27.56, 3.771, 21.91, 6.04), (27.56, 3.774, 21.92, 5.91)],
    ),
    (
        "ResNeXt101 (32x4d)",
        "resnext101_32x4d",
        1.0,
        [(44.18, 7.508, 21.54, 5.75), (48.96, 7.512, 21.17, 5.66), (48.96, 7.519, 21.07, 5.59)],
    ),
]
# Table 5: MobileNet v1 (alpha = width).
_TABLE5 = [
    (
        "MobileNet (alpha=0.7)",
        "mobilenet_v1",
        0.7,
        [(2.30, 0.283, 34.86, 13.69), (2.71, 0.283, 32.50, 12.49), (2.71, 0.289, 31.51, 11.48)],
    ),
    (
        "MobileNet (alpha=1.0)",
        "mobilenet_v1",
        1.0,
        [(4.23, 0.569, 31.39, 11.51), (5.07, 0.570, 29.97, 10.63), (5.07, 0.576, 29.01, 9.99)],
    ),
]
for _table, _entries in (("table4", _TABLE4), ("table5", _TABLE5)):
    for _label, _arch, _width, _numbers in _entries:
        for (_suffix, _attention), (_params, _gflops, _top1, _top5) in zip(
            (("", NONE), (" + SE", SE), (" + CBAM", CBAM)), _numbers, strict=True
        ):
            _ROWS.append(
                PaperRow(
                    _table,
                    _label + _suffix,
                    _arch,
                    _attention,
                    _top1,
                    _top5,
                    _params,
                    _gflops,
                    width=_width,
                    baseline=not _suffix,
                    # The project's notes give Table 5's errors and plain params; the rest of its costs are recalled.
                    sources=(
                        (("gflops", "recalled"),) + ((("params_m", "recalled"),) if _suffix else ())
                        if _table == "table5"
                        else ()
                    ),
                )
            )

PAPER_ROWS: tuple[PaperRow, ...] = tuple(_ROWS)


def sources_footnote(rows: list[PaperRow | None], fields: tuple[str, ...] = FIELDS) -> str:
    """The footnote for the marks a table shows: one sentence per source used by ``rows``' ``fields``."""
    used = dict.fromkeys(
        row.source(f) for row in rows if row is not None for f in fields if getattr(row, f) is not None
    )
    lines = [f"{SOURCES[key][0]} {SOURCES[key][1]}" for key in SOURCES if key in used]
    lines += [
        f"{SOURCES['disputed'][0]} {row.label}: other reading {row.other_label}"
        for row in rows
        if row and row.other_label
    ]
    return "Paper numbers: " + "; ".join(dict.fromkeys(lines)) + "." if lines else ""


def find_row(
    tables: list[str], arch: str, width: float, attention: dict[str, Any], stem: str, num_classes: int
) -> PaperRow | None:
    """The first row of the named tables (in the order given) that describes this network, if any."""
    for table in tables:
        for row in PAPER_ROWS:
            if row.table == table and row.matches(arch, width, attention, stem, num_classes):
                return row
    return None
