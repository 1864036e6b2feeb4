"""Seed 000: a CT slice classifier, first for acute cholecystitis with and without contrast.

One torchvision classifier per card (MobileNet-v3-small / -large, ResNet-18 /
50 or Inception-v3 in the study) scores every axial slice of a CT series,
windowed from Hounsfield units (abdomen WL 40 / WW 400 unless the card says
otherwise), with a softmax over the card's labels; the series decision
aggregates the slices and names its key slices; Grad-CAM explains the top
slices. The study trained separate models for contrast-enhanced and
non-contrast CT; the node's router picks the model per series from its
contrast attributes (``match: {contrast: enhanced}``), and another CT task
the study named (aortic dissection, pulmonary embolism, peritoneal dialysis)
is a new card for the same pipeline.

Modules: :mod:`~pipelines.ctslice.labels` (labels, codes, default window),
:mod:`~pipelines.ctslice.pipeline` (the node's ``ct-slice-classifier``
pipeline), :mod:`~pipelines.ctslice.data` (slice CSV or class folders to a
dataset), :mod:`~pipelines.ctslice.train` (the study's protocol: parameter
grid, repeats with 95 % intervals), :mod:`~pipelines.ctslice.evaluate` (the
study's table per slice and per series), :mod:`~pipelines.ctslice.synth`
(abdominal CT phantoms with and without contrast) and
:mod:`~pipelines.ctslice.demo` (the two demo models).
"""

from pipelines.study import DemoModel, Study

#: This study, declared once for the registry, the CLI, the demo builder and CI's bench smoke.
STUDY = Study(
    __name__,
    "000",
    demos=(
        DemoModel("ct-gb-contrast-demo", "demo:CONTRAST_DEMO_SPEC", 2),
        DemoModel("ct-gb-noncontrast-demo", "demo:NONCONTRAST_DEMO_SPEC", 0.6),
    ),
    bench="bench.ctslice",
)
