"""Seed 001: chest X-ray findings detection (Faster R-CNN) on PA chest radiographs.

Each finding (aortic atherosclerosis calcification, lung field infiltration,
cardiac hypertrophy) is annotated as a binary mask per finding and image;
every connected component of a mask becomes one bounding box in a COCO
detection file, and images are split into training and validation by Patient
ID so that no patient is in both. Modules: :mod:`~pipelines.cxr.coco` (masks
to COCO, COCO validation, the patient-grouped split) and
:mod:`~pipelines.cxr.synth` (chest radiograph phantoms with findings, as real
DX DICOM files with masks).
"""

from pipelines.study import DemoModel, Study

#: This study, declared once for the registry, the CLI, the demo builder and CI's bench smoke.
STUDY = Study(
    __name__, "001", demos=(DemoModel("cxr-demo", "demo:CXR_DEMO", 18),), bench="bench.cxr"
)
