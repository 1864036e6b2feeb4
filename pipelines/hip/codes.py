"""The classes of seed 003, the WHO rule that makes them, and their SNOMED CT codes.

Codes (SNOMED CT, ``SCT``). pydicom 3.0's ``pydicom.sr.codedict`` (the DICOM
PS3.16 content mapping resource) has neither concept, so they were checked
against SNOMED CT content published elsewhere:

* 64859006 |Osteoporosis (disorder)|, e.g. HL7 Switzerland's CH LAB-Order value
  set "normal-contexts-vitamin-d" (``is-a 64859006 (Osteoporosis)``);
* 29627003 |Structure of neck of femur (body structure)|, e.g. the AAPM TG-263
  structure-name to SNOMED CT mapping (``Femur_Neck -> 29627003``), with
  laterality qualifiers 24028007 |Right| and 7771000 |Left| as there;
* 24028007 "Right" and 7771000 "Left" are in ``pydicom.sr.codedict.codes.SCT``
  (CID 244 Laterality), as is 17621005 "Normal".
"""

from __future__ import annotations

import math

from pipelines.card import CodeSpec

#: The two classes of the study, in class-index order (0, 1), as its reports name them.
CLASSES: tuple[str, str] = ("normal/osteopenia", "osteoporosis")
NEGATIVE, POSITIVE = CLASSES
#: The card's one label (the model's one output is its logit).
LABEL = "osteoporosis"
#: WHO: a femoral-neck T-score at or below this is osteoporosis.
T_SCORE_THRESHOLD = -2.5
#: The object class of the VOC boxes and of the localiser.
NECK_CLASS = "femoral_neck"

OSTEOPOROSIS = CodeSpec(value="64859006", scheme="SCT", meaning="Osteoporosis")
FEMORAL_NECK = CodeSpec(value="29627003", scheme="SCT", meaning="Structure of neck of femur")
RIGHT = CodeSpec(value="24028007", scheme="SCT", meaning="Right")
LEFT = CodeSpec(value="7771000", scheme="SCT", meaning="Left")


def label_of(t_score: float) -> int:
    """1 (osteoporosis) for a femoral-neck T-score <= -2.5, else 0 (normal or osteopenia).

    Raises
    ------
    ValueError
        If the T-score is not a finite number.
    """
    if not math.isfinite(t_score):
        raise ValueError(f"T-score must be a finite number, got {t_score!r}")
    # DEXA reports T-scores to one decimal: compare at that precision, so -2.50000001 is -2.5
    return int(round(t_score, 6) <= T_SCORE_THRESHOLD)


#: Seed 003's advice with a positive result (its web UI's warning): the
#: radiograph only suggests osteoporosis; DEXA measures it.
DEXA_ADVICE = (
    "Osteoporosis suspected: a DEXA (dual-energy X-ray absorptiometry) exam of the hip is "
    "recommended to confirm it. This AI result does not replace the DEXA measurement."
)
