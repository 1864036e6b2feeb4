"""DICOM result objects the node sends back to the PACS.

Pipelines return typed :class:`pipelines.base.Finding` and
:class:`pipelines.base.Heatmap` objects; this package turns them into
standard objects every PACS stores and viewers display:

* :func:`build_sr` — one TID 1500 Comprehensive 3D SR per (study, pipeline
  run), with a measurement group per finding (OHIF draws boxes from it);
* :func:`build_heatmap_sc` — one RGB Secondary Capture image per heatmap,
  the heatmap blended over the source image (:func:`overlay_rgb`);
* :class:`AlgorithmInfo` — the model identity both write, including the
  "NOT FOR DIAGNOSTIC USE" series description of non-validated models;
* :func:`result_uid` — deterministic UIDs, so a resent job replaces its
  results instead of duplicating them.

All objects go into the *source* study as new series, preliminary and
unverified, in Explicit VR Little Endian.
"""

from dicom_node.results.algorithm import NOT_FOR_DIAGNOSTIC_USE, AlgorithmInfo
from dicom_node.results.sc import (
    build_heatmap_sc,
    heatmap_series_instance_uid,
    heatmap_sop_instance_uid,
    overlay_rgb,
)
from dicom_node.results.sr import (
    build_sr,
    finding_tracking_uid,
    sr_series_instance_uid,
    sr_sop_instance_uid,
)
from dicom_node.results.uids import result_uid

__all__ = [
    "NOT_FOR_DIAGNOSTIC_USE",
    "AlgorithmInfo",
    "build_heatmap_sc",
    "build_sr",
    "finding_tracking_uid",
    "heatmap_series_instance_uid",
    "heatmap_sop_instance_uid",
    "overlay_rgb",
    "result_uid",
    "sr_series_instance_uid",
    "sr_sop_instance_uid",
]
