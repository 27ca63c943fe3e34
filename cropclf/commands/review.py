"""Finds labelled regions whose label is probably wrong, by k-fold cross-validation and confident learning.

    python scripts/review.py --run runs/demo                 # runs/demo/review/
    python scripts/review.py --run runs/demo --folds 3
    python scripts/review.py --run runs/demo --simulate-noise 0.05   # measure it: flip 5 % of labels

Trains --folds models with the run's config (its data, heads and epochs), each scoring the images it
never saw, then lists the regions whose given label those out-of-sample probabilities make unlikely
(confident learning, Northcutt et al., JAIR 2021): RUN/review/label_issues.csv (least likely first),
out_of_sample.csv (every region's probabilities), suspects.png (given -> suggested) and the
annotation file again, in its own format, with a `review` region attribute on each suspect (images
holding suspects first), to filter and fix in VIA. --simulate-noise F flips a fraction F of each
head's labels (seeded) and reports the precision and recall of the flipped regions among the top N
suspects (N: the number flipped), next to ranking by an in-sample model's probability; results in
RUN/review_simulated/.
"""

import argparse

from cropclf.cli import quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory of scripts/train.py (its config.json is used)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over images (default 5)")
    p.add_argument("--epochs", type=int, help="epochs per fold model (default: the run's train.epochs)")
    p.add_argument("--out", help="output folder (default RUN/review, or RUN/review_simulated)")
    p.add_argument("--simulate-noise", type=float, metavar="FRACTION",
                   help="flip this fraction of each head's labels first and measure what is found")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the flips (default 0)")
    p.add_argument("--no-baseline", action="store_true", help="with --simulate-noise: skip the in-sample baseline")
    args = p.parse_args(argv)
    if args.simulate_noise is not None and not 0 < args.simulate_noise < 1:
        p.error(f"--simulate-noise takes a fraction in (0, 1). Received: {args.simulate_noise}")
    quiet_tensorflow()
    from cropclf.review import review_run

    review_run(args.run, folds=args.folds, out_dir=args.out, simulate_noise=args.simulate_noise,
               noise_seed=args.noise_seed, baseline=not args.no_baseline, epochs=args.epochs)

