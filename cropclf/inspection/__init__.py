"""Looking at a dataset before training: `report` (inspect_dataset, the printed summary), `checks` (what is
wrong, region by region, by training's own rules) and `sheet` (the contact sheet). No TensorFlow or Keras."""

from cropclf.inspection.report import format_report, inspect_dataset

__all__ = ["format_report", "inspect_dataset"]
