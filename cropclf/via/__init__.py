"""VGG Image Annotator files in and out: one room for every VIA quirk.

``vocabulary`` (columns, option types, quoting, ``undefined`` repair, the region key) is shared by the
readers (``csv_reader``, ``json_reader`` -> ``parsed``; ``shapes``: shape -> box; ``frame``: the
region table) and ``writer`` (predictions back into the same file).
"""

from cropclf.via.frame import FIXED_COLUMNS, read_annotations, resolve_image_path
from cropclf.via.writer import write_attributes, write_via

__all__ = ["FIXED_COLUMNS", "read_annotations", "resolve_image_path", "write_attributes", "write_via"]
