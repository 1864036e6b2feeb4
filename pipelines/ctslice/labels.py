"""Labels, codes and the default window of the gallbladder (seed 000) cards.

Codes: SNOMED CT where the concept could be verified; sources per code below.

==============  ======  =========  ==============================================================
label           scheme  code       meaning and where it was verified
==============  ======  =========  ==============================================================
normal          SCT     17621005   "Normal" (pydicom.sr.codedict ``codes.SCT.Normal``; the
                                   generic demo uses it too); ``report: false``
cholecystitis   SCT     76581006   "Cholecystitis": not in DICOM's SNOMED subset shipped with
                                   pydicom, checked in independent public terminology tables
                                   (UMLS C0008350 -> SNOMED CT 76581006, ICD-10 K81; clinical
                                   decision rules coding "Cholecystitis" as SNOMEDCT 76581006)
finding site    SCT     28231008   "Gallbladder" (pydicom.sr.codedict ``codes.SCT.Gallbladder``
                                   = ``GallbladderStructure``; DICOM's meaning in CID 4)
==============  ======  =========  ==============================================================

Other tasks the study trained the same way (aortic dissection, pulmonary
embolism, peritoneal dialysis) bring their own labels and codes in their own
cards; pydicom's dictionary has e.g. ``codes.SCT.AorticDissection``
(308546005) and ``codes.SCT.PulmonaryEmbolism`` (59282003).
"""

from __future__ import annotations

from pipelines.card import CodeSpec

#: Model output order of the gallbladder cards.
LABELS: tuple[str, ...] = ("normal", "cholecystitis")
#: The label that is the study's "positive" class.
POSITIVE = "cholecystitis"

NORMAL_CODE = CodeSpec(value="17621005", scheme="SCT", meaning="Normal")
CHOLECYSTITIS_CODE = CodeSpec(value="76581006", scheme="SCT", meaning="Cholecystitis")
GALLBLADDER = CodeSpec(value="28231008", scheme="SCT", meaning="Gallbladder")

#: Abdomen soft-tissue window (WL 40 / WW 400 HU): the card default when it names no window.
ABDOMEN_WINDOW: tuple[float, float] = (40.0, 400.0)

#: Scheme of the codes this package makes up for labels without a known code.
LOCAL_SCHEME = "99DCMNODE"
