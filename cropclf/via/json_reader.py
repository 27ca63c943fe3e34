"""Reads VIA 1.x/2.x JSON exports and VIA 2.x project files (option labels, default image folder)."""

from __future__ import annotations

from cropclf.via.csv_reader import VIA3_HINT
from cropclf.via.parsed import Parsed, loads
from cropclf.via.vocabulary import OPTION_TYPES, dump


def read_json(text: str, parsed: Parsed):
    """Reads a VIA 1.x/2.x JSON export or a VIA 2.x project file."""
    data = loads(text, parsed, None, "the JSON file")
    if not isinstance(data, dict):
        raise parsed.error(None, "expected a JSON object keyed by image (a VIA 2 JSON export) or a "
                           "VIA 2 project.", text.lstrip())
    if "project" in data and {"config", "attribute", "file", "metadata"} & data.keys():
        raise parsed.error(None, VIA3_HINT, f"top-level keys {sorted(data)}")
    if {"images", "annotations"} <= data.keys():
        raise parsed.error(None, "this is a COCO file; export the VIA annotations as VIA CSV or "
                           "JSON instead.", f"top-level keys {sorted(data)}")
    if data and data.keys() <= {"region", "file"}:
        raise parsed.error(None, "this is a VIA attribute definition file, not annotations; pass "
                           "the annotation export or the project file.", text.lstrip())
    metadata = data
    if "_via_img_metadata" in data:
        parsed.format, metadata = "via2_project", data["_via_img_metadata"]
        _read_project_settings(data, parsed)
    if not isinstance(metadata, dict):
        raise parsed.error("_via_img_metadata", "expected an object keyed by image.",
                           dump(metadata))
    key = 0  # the region key: the region object's position over all images, in file order
    for image_key, image in metadata.items():
        if not isinstance(image, dict) or "filename" not in image:
            raise parsed.error(f"image key {image_key!r}", "expected an object with 'filename', "
                               "'regions' and 'file_attributes' as VIA writes it.", dump(image))
        filename, regions = image["filename"], image.get("regions", [])
        loc = f"image {filename!r}"
        if isinstance(regions, dict) or "fileref" in image or "base64_img_data" in image:
            parsed.format = parsed.format or "via1_json"
        if not isinstance(regions, (dict, list)):
            raise parsed.error(loc, "'regions' must be a list or an object.", dump(regions))
        parsed.add(filename, 0, {}, {}, loc, None)  # the image, even without regions
        file_attrs = image.get("file_attributes", {})
        if not isinstance(file_attrs, dict):
            raise parsed.error(loc, "'file_attributes' must be a JSON object.", dump(file_attrs))
        parsed.images[filename] = parsed.images[filename] or file_attrs
        for i, region in enumerate(regions.values() if isinstance(regions, dict) else regions):
            rloc = f"{loc} region {i}"
            if not isinstance(region, dict):
                raise parsed.error(rloc, "a region must be an object with 'shape_attributes' and "
                                   "'region_attributes'.", dump(region))
            parsed.add(filename, i, region.get("shape_attributes", {}),
                       region.get("region_attributes", {}), rloc, key)
            key += 1  # every region object counts, as the writer counts them
    parsed.format = parsed.format or "via2_json"


def _read_project_settings(data: dict, parsed: Parsed):
    """Takes option id -> label maps and the default image folder from a VIA 2 project."""
    definitions = data.get("_via_attributes")
    for kind in ("region", "file"):
        specs = definitions.get(kind) if isinstance(definitions, dict) else None
        for name, spec in specs.items() if isinstance(specs, dict) else ():
            parsed.names[kind].append(name)
            spec = spec if isinstance(spec, dict) else {}
            if spec.get("type") in OPTION_TYPES and isinstance(spec.get("options"), dict):
                parsed.options[(kind, name)] = spec["options"]
    settings = data.get("_via_settings")
    core = settings.get("core") if isinstance(settings, dict) else None
    folder = core.get("default_filepath") if isinstance(core, dict) else None
    if isinstance(folder, str) and folder.strip() and "://" not in folder:
        folder = parsed.source.parent / folder.strip()
        if folder.is_dir():
            parsed.extra_roots.append(folder)
