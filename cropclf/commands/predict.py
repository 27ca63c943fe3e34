"""Classify regions with an exported SavedModel; optionally write the labels back into the VIA file.

    python scripts/predict.py --model runs/demo/saved_model --image photo.jpg --box 10,20,30,40
    python scripts/predict.py --model runs/demo/saved_model --annotations via.csv --out pred.csv \\
        --via-out via_predicted.csv --draw drawn/

Predictions go to stdout as CSV unless --out is given (JSON for --out *.json or --format json).
--via-out writes the annotation file again, in its own format, for a person to open in VIA and
correct: a region someone labelled keeps its label, the prediction goes beside it as
<head>_predicted and <head>_score; regions without a label get the head filled in. Images come
least sure first (--keep-order keeps the file's order); --only-below 0.8 writes only the images
holding a region scored below 0.8, and puts predictions on those regions only. --review-sheet
draws the least-sure crops with their two best labels. Regions that cannot be classified are listed.
"""

import argparse
import sys

from cropclf.cli import quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="SavedModel folder (RUN/saved_model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image, with its regions given by --box")
    src.add_argument("--annotations", help="VIA CSV/JSON export or project file, or a flat CSV")
    p.add_argument("--box", action="append", metavar="X,Y,W,H",
                   help="a region on --image in pixels; repeat it for more (--box=-4,2,10,10 "
                        "when x is negative)")
    p.add_argument("--images", help="folder the annotation's image filenames resolve against")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept filenames that point outside the image folder")
    p.add_argument("--out", help="predictions file (default: stdout)")
    p.add_argument("--format", choices=("csv", "json"), help="default: --out's extension, else csv")
    p.add_argument("--via-out", help="write the annotation file again, labels filled in")
    p.add_argument("--overwrite-labels", action="store_true",
                   help="with --via-out: replace the labels people gave with the predicted ones")
    p.add_argument("--keep-order", action="store_true",
                   help="with --via-out: keep the file's image order (default: least sure first)")
    p.add_argument("--only-below", type=float, metavar="SCORE",
                   help="with --via-out: only images holding a region scored below SCORE (0-1, on "
                        "any head); they keep all their regions, predictions go on those below it")
    p.add_argument("--review-sheet", metavar="PNG",
                   help="contact sheet of the least-sure crops with their two best labels")
    p.add_argument("--draw", metavar="DIR", help="write DIR/<image>.png, boxes and labels drawn")
    args = p.parse_args(argv)
    if args.only_below is not None and not 0 < args.only_below <= 1:
        p.error(f"--only-below takes a score in (0, 1]. Received: {args.only_below}")
    if (args.overwrite_labels or args.keep_order or args.only_below is not None) and not args.via_out:
        p.error("--overwrite-labels, --keep-order and --only-below shape the --via-out file; pass --via-out")
    if bool(args.image) != bool(args.box):
        p.error("--image and --box go together: --image FILE --box x,y,width,height [--box ...]")
    if args.via_out and not args.annotations:
        p.error("--via-out rewrites the file given by --annotations; pass --annotations")
    quiet_tensorflow()
    from cropclf.via import read_annotations
    from cropclf.serving.prediction import Classifier, predict_regions, regions_from_boxes, write_predictions
    from cropclf.via.writer import write_via

    if args.image:
        frame = regions_from_boxes(args.image, args.box)
    else:
        frame = read_annotations(args.annotations, args.images,
                                 allow_outside_root=args.allow_outside_root)
    clf = Classifier(args.model)
    predictions, skipped = predict_regions(clf, frame, draw_dir=args.draw,
                                           second=bool(args.review_sheet))
    for s in skipped:
        print(f"skipped: {s}", file=sys.stderr)
    write_predictions(predictions, args.out, args.format)
    if args.via_out:
        write_via(args.annotations, args.via_out, frame, predictions, clf.heads,
                  overwrite_labels=args.overwrite_labels, least_sure_first=not args.keep_order,
                  only_below=args.only_below)
    if args.review_sheet:
        from cropclf.review import least_sure_sheet

        least_sure_sheet(frame, predictions, clf.heads, clf.preprocessing, args.review_sheet)
    where = f"; predictions in {args.out}" if args.out else ""
    print(f"{len(predictions)} region(s) classified on {frame['path'].nunique()} image(s), "
          f"{len(skipped)} skipped{where}", file=sys.stderr)

