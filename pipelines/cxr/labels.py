"""Codes of the chest radiograph findings seed 001 names, for the SR.

The seed's dataset has seven findings; its text names three: aortic
atherosclerosis calcification, lung field infiltration and cardiac
hypertrophy. The class list of a model is its card's (and its COCO
categories'), not this module's: these tables only give the codes a
trainer writes into a new card for the class names it recognises.

Codes (SNOMED CT concepts as printed in the DICOM and NLM tables we could
check; a card can be edited to a hospital's preferred code):

* cardiac hypertrophy: (8186001, SCT, "Cardiomegaly") — on a radiograph the
  finding is an enlarged cardiac silhouette, which is what SNOMED calls
  cardiomegaly; site (80891009, SCT, "Heart").
* lung field infiltration: (409609008, SCT, "Radiologic infiltrate of
  lung"); site (39607008, SCT, "Lung").
* aortic atherosclerosis calcification: the SNOMED CT concept "Calcification
  of aorta" (440029008) appears in a public code table, but we could not
  verify it against a SNOMED CT release, so the finding carries the local
  code (CXR-AOCALC, 99DCMNODE) until a hospital's terminologist confirms
  one; site (15825003, SCT, "Aorta").

A class name the tables do not know gets a local 99DCMNODE code derived
from its name (stable, at most 16 characters as DICOM's Code Value allows)
and no finding site; the trainer warns, and the card can be edited.
"""

from __future__ import annotations

import hashlib

from pipelines.card import CodeSpec

LOCAL_SCHEME = "99DCMNODE"

CALCIFICATION = "aortic_atherosclerosis_calcification"
INFILTRATION = "lung_field_infiltration"
HYPERTROPHY = "cardiac_hypertrophy"

CODES: dict[str, CodeSpec] = {
    CALCIFICATION: CodeSpec(
        value="CXR-AOCALC", scheme=LOCAL_SCHEME, meaning="Aortic atherosclerosis calcification"
    ),
    INFILTRATION: CodeSpec(
        value="409609008", scheme="SCT", meaning="Radiologic infiltrate of lung"
    ),
    HYPERTROPHY: CodeSpec(value="8186001", scheme="SCT", meaning="Cardiomegaly"),
}

SITES: dict[str, CodeSpec] = {
    CALCIFICATION: CodeSpec(value="15825003", scheme="SCT", meaning="Aorta"),
    INFILTRATION: CodeSpec(value="39607008", scheme="SCT", meaning="Lung"),
    HYPERTROPHY: CodeSpec(value="80891009", scheme="SCT", meaning="Heart"),
}


def finding_code(name: str) -> CodeSpec:
    """The code of a class name: the table's, or a stable local one."""
    if name in CODES:
        return CODES[name]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8].upper()
    meaning = name.replace("_", " ").strip().capitalize() or name
    return CodeSpec(value=f"CXR-{digest}", scheme=LOCAL_SCHEME, meaning=meaning[:64])


def finding_site(name: str) -> CodeSpec | None:
    """The anatomic site of a class name, when the table knows it."""
    return SITES.get(name)
