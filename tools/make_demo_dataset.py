"""Build the nuclei demo dataset (COCO instance format) from the image and label mask shipped in stardist 0.9.2.

    python tools/make_demo_dataset.py [--out data/nuclei_demo] [--seed 0] [--force]

Idempotent: an existing, valid dataset built with the same settings is kept (use ``--force`` to rebuild). Needs
``pip install --no-deps stardist==0.9.2`` (requirements/demo.txt); nothing is downloaded at run time. The logic
lives in :mod:`stvit_det.datasets.demo_nuclei`.
"""
import argparse
import sys

from stvit_det.datasets.demo_nuclei import QUADRANTS, ann_file_path, make_demo_dataset


def parse_args():
    parser = argparse.ArgumentParser(description='Build the nuclei demo dataset from stardist 0.9.2 data files')
    parser.add_argument('--out', default='data/nuclei_demo', help='output directory')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random flips / rotations of train crops')
    parser.add_argument(
        '--val-quadrant', type=int, default=3, choices=range(4), help=f'held-out quadrant: {list(QUADRANTS)}')
    parser.add_argument('--force', action='store_true', help='rebuild even if a valid dataset exists')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        info, built = make_demo_dataset(args.out, force=args.force, seed=args.seed, val_quadrant=args.val_quadrant)
    except FileNotFoundError as e:
        sys.exit(f'make_demo_dataset.py: error: {e}')
    counts = info['counts']
    print(f'{"built" if built else "already built (use --force to rebuild)"}: {args.out}')
    for split in ('train', 'val'):
        print(f'  {split}: {counts[split]["images"]} images, {counts[split]["annotations"]} instances '
              f'({counts[split]["source_labels"]} source nuclei) -> {ann_file_path(args.out, split)}')


if __name__ == '__main__':
    main()
