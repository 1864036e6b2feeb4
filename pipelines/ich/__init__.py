"""Seed 002: intracranial hemorrhage (ICH) on non-contrast head CT, RSNA 2019 format.

One model per slice: three HU windows (brain 40/80, subdural 50/130, bone
600/2800) stacked as channels feed a torchvision backbone (ResNet-50, or
EfficientNet-B3 from the card); the slice's normalised position along the
series is a second input; six sigmoid outputs give independent probabilities
of epidural, intraparenchymal, intraventricular, subarachnoid, subdural and
any hemorrhage. The study result aggregates the slices (see
:mod:`pipelines.ich.pipeline`).

Modules: :mod:`~pipelines.ich.labels` (label names and codes),
:mod:`~pipelines.ich.model` (the network), :mod:`~pipelines.ich.slices`
(DICOM slice to model input), :mod:`~pipelines.ich.pipeline` (the node's
``ich`` pipeline), :mod:`~pipelines.ich.data` (RSNA CSV + DICOM folder to a
dataset), :mod:`~pipelines.ich.train`, :mod:`~pipelines.ich.evaluate`,
:mod:`~pipelines.ich.synth` (head-CT phantoms) and :mod:`~pipelines.ich.demo`.
"""

from pipelines.study import DemoModel, Study

#: This study, declared once for the registry, the CLI, the demo builder and CI's bench smoke.
STUDY = Study(
    __name__, "002", demos=(DemoModel("ich-demo", "demo:ICH_DEMO", 8),), bench="bench.ich"
)
