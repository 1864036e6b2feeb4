"""Seed 004: any torchvision classifier a card describes (``generic``), Grad-CAM explained.

A new classification task needs no code: train a model whose outputs are the
card's labels, write its card and route series to ``pipeline: generic``.
Modules: :mod:`~pipelines.generic.pipeline` (the node's pipeline) and
:mod:`~pipelines.generic.demo` (the ``generic-demo`` lesion classifier,
trained on chest phantoms with the seed's recipe).
"""

from pipelines.study import DemoModel, Study

#: This study, declared once for the registry, the CLI, the demo builder and CI's bench smoke.
STUDY = Study(__name__, "004", demos=(DemoModel("generic-demo", "demo:build_generic_demo", 2.7),))
