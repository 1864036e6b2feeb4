"""Studies the end-to-end tests send that no pipeline's synthesiser writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from pipelines.common.phantoms import write_radiograph_study


def blank_hip(folder: Path) -> Path:
    """A radiograph with nothing on it, labelled as a hip: no femoral neck to find.

    The shipped ``hip-xr`` rule routes it to the hip model, which cannot analyse it.
    """
    source = write_radiograph_study(folder / "src", seed=71, index=0, lesion=False)
    ds = pydicom.dcmread(source.path)
    ds.BodyPartExamined = "HIP"
    ds.PixelData = np.full((ds.Rows, ds.Columns), 100, dtype=ds.pixel_array.dtype).tobytes()
    out = folder / "blank-hip.dcm"
    ds.save_as(out)
    return out


def implant_hip(folder: Path) -> Path:
    """A pelvis radiograph with a metal hip prosthesis: an image seed 003 excluded.

    The hip model refuses it before it runs (:mod:`pipelines.hip.quality`).
    """
    from pipelines.hip.synth import PELVIS, write_hip_dataset

    data = write_hip_dataset(
        folder / "src", patients=4, seed=72, size=320, implant_fraction=1.0, single_hip_fraction=0.0
    )
    return next(image.path for image in data.images if image.kind == PELVIS)
