"""Object detection data: COCO json and grounding JSONL readers/writers, the synthetic shapes set, and the
:class:`DetectionDataModule` (box-aware transforms, collate). The record format and box conventions live in
:mod:`transferkit.data.grounding`."""

from transferkit.data.detection.coco import coco_to_records, read_coco, records_to_coco, write_coco
from transferkit.data.detection.datamodule import (
    DetectionDataModule,
    DetectionDataset,
    build_detection_transform,
    detection_collate,
    read_annotations,
)
from transferkit.data.detection.shapes import ShapesConfig, ensure_shapes, make_shapes

__all__ = [
    "DetectionDataModule",
    "DetectionDataset",
    "ShapesConfig",
    "build_detection_transform",
    "coco_to_records",
    "detection_collate",
    "ensure_shapes",
    "make_shapes",
    "read_annotations",
    "read_coco",
    "records_to_coco",
    "write_coco",
]
