"""The paper's printed numbers (ablation/experiment/paper.py) carry where they came from."""

from ablation.experiment.paper import FIELDS, PAPER_ROWS, SOURCES


def test_every_printed_number_has_a_known_source():
    for row in PAPER_ROWS:
        for field in FIELDS:
            if getattr(row, field) is not None:
                assert row.source(field) in SOURCES, (row.label, field)
    # Nothing was checked against the PDF here: no number may claim a source that says otherwise.
    assert {row.source(f) for row in PAPER_ROWS for f in FIELDS} <= {"transcribed", "recalled", "disputed"}
    # Table 5: its errors and plain params are written in SPEC.md, its SE / CBAM params and all GFLOPs are not.
    table5 = [row for row in PAPER_ROWS if row.table == "table5"]
    assert {row.source("top1") for row in table5} == {"transcribed"}
    assert {row.source("gflops") for row in table5} == {"recalled"}
    assert {row.source("params_m") for row in table5 if row.baseline} == {"transcribed"}
    assert {row.source("params_m") for row in table5 if not row.baseline} == {"recalled"}
