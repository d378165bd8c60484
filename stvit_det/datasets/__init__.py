"""Dataset utilities: COCO annotation checks and the embedded nuclei demo dataset (nothing is registered here)."""
from .coco_check import (CocoAnnotationError, DatasetCheckError, check_coco_annotations, check_dataset_cfg,
                         check_dataset_cfgs, iter_leaf_datasets)
from .demo_nuclei import (ann_file_path, labels_to_coco_annotations, load_stardist_nuclei, make_demo_dataset,
                          plan_views, quadrant_box, train_crop_boxes, validate_demo_dataset)
from .seg_check import SegDatasetError, check_seg_dataset_cfg, check_seg_dataset_cfgs

__all__ = [
    'CocoAnnotationError', 'DatasetCheckError', 'check_coco_annotations', 'check_dataset_cfg', 'check_dataset_cfgs',
    'iter_leaf_datasets', 'ann_file_path', 'labels_to_coco_annotations', 'load_stardist_nuclei', 'make_demo_dataset',
    'plan_views', 'quadrant_box', 'train_crop_boxes', 'validate_demo_dataset', 'SegDatasetError',
    'check_seg_dataset_cfg', 'check_seg_dataset_cfgs'
]
