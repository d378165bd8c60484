"""Build the nuclei demo dataset (COCO instance format) from the image and label mask shipped in stardist 0.9.2.

    python tools/make_demo_dataset.py [--out data/nuclei_demo] [--seed 0] [--force] [--semantic]

``--semantic`` also writes the semantic label maps (background 0 / nucleus 1) of the same images under
``seg_maps/{train,val}/`` for the segmentation demo (:mod:`stvit_det.datasets.demo_nuclei_seg`).

Idempotent: an existing, valid dataset built with the same settings is kept (use ``--force`` to rebuild). Needs
``pip install --no-deps stardist==0.9.2`` (requirements/demo.txt); nothing is downloaded at run time. The logic
lives in :mod:`stvit_det.datasets.demo_nuclei`.
"""
import argparse
import sys

from stvit_det.datasets.demo_nuclei import QUADRANTS, ann_file_path, make_demo_dataset
from stvit_det.datasets.demo_nuclei_seg import SEG_DIR, make_seg_demo_dataset


def parse_args():
    parser = argparse.ArgumentParser(description='Build the nuclei demo dataset from stardist 0.9.2 data files')
    parser.add_argument('--out', default='data/nuclei_demo', help='output directory')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random flips / rotations of train crops')
    parser.add_argument(
        '--val-quadrant', type=int, default=3, choices=range(4), help=f'held-out quadrant: {list(QUADRANTS)}')
    parser.add_argument('--force', action='store_true', help='rebuild even if a valid dataset exists')
    parser.add_argument(
        '--semantic', action='store_true', help='also write semantic label maps (seg_maps/) for the segmentation demo')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        info, built = make_demo_dataset(args.out, force=args.force, seed=args.seed, val_quadrant=args.val_quadrant)
        if args.semantic:
            seg_info, seg_built = make_seg_demo_dataset(
                args.out, force=args.force, seed=args.seed, val_quadrant=args.val_quadrant)
    except OSError as e:  # a missing source file, files of another dataset, a file or no permission in --out's way
        sys.exit(f'make_demo_dataset.py: error: {e}')
    counts = info['counts']
    print(f'{"built" if built else "already built (use --force to rebuild)"}: {args.out}')
    for split in ('train', 'val'):
        print(f'  {split}: {counts[split]["images"]} images, {counts[split]["annotations"]} instances '
              f'({counts[split]["source_labels"]} source nuclei) -> {ann_file_path(args.out, split)}')

    if args.semantic:
        print(f'semantic label maps {"written" if seg_built else "already written"}: '
              f'{args.out}/{SEG_DIR}/{{train,val}}/ (classes background 0, nucleus 1)')
        for split in ('train', 'val'):
            print(f'  {split}: nucleus fraction {seg_info["counts"][split]["nucleus_fraction"]:.3f}')


if __name__ == '__main__':
    main()
