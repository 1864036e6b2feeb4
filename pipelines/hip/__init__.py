"""Seed 003: osteoporosis screening on hip and pelvis radiographs (``hip-osteoporosis``).

The study pairs each hip radiograph with a DEXA femoral-neck T-score of the
same patient taken within six months (WHO: T <= -2.5 is osteoporosis), boxes
the femoral neck by hand in LabelImg (Pascal VOC XML), mirrors right femurs
to look like left ones and trains a ResNet-18 with one output
(BCEWithLogits) on the 224 x 224 crops. The node finds the necks itself with
a small Faster R-CNN trained from the same VOC boxes.

Modules: :mod:`~pipelines.hip.codes` (labels and SNOMED CT codes),
:mod:`~pipelines.hip.voc` (LabelImg XML), :mod:`~pipelines.hip.dexa`
(radiograph-DEXA pairing), :mod:`~pipelines.hip.sides` (which neck is
which side, crops, mirroring and mapping back), :mod:`~pipelines.hip.radiograph`
(reading and guards), :mod:`~pipelines.hip.model` (the two models and the
card's options), :mod:`~pipelines.hip.pipeline` (the node's pipeline),
:mod:`~pipelines.hip.data`, :mod:`~pipelines.hip.train`,
:mod:`~pipelines.hip.evaluate`, :mod:`~pipelines.hip.synth` (pelvis phantoms)
and :mod:`~pipelines.hip.demo` (the ``hip-demo`` model).
"""

from pipelines.study import DemoModel, Study

#: This study, declared once for the registry, the CLI, the demo builder and CI's bench smoke.
STUDY = Study(
    __name__, "003", demos=(DemoModel("hip-demo", "demo:HIP_DEMO", 4),), bench="bench.hip"
)
