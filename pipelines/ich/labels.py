"""The six RSNA hemorrhage labels, their codes, loss weights and the seed's HU windows.

Codes: SNOMED CT where the concept was verified against two independent public
sources (DICOM's own SNOMED subset as shipped with pydicom, and published
FHIR value sets / terminology tables); a documented local scheme otherwise,
because a wrong SNOMED code in a report is worse than an honest local one.

=================  =========  ==========  =============================================
label              scheme     code        meaning
=================  =========  ==========  =============================================
epidural           99DCMNODE  ICH-EDH     Epidural hemorrhage (local: SNOMED not verified)
intraparenchymal   SCT        274100004   Cerebral hemorrhage
intraventricular   99DCMNODE  ICH-IVH     Intraventricular hemorrhage (local: not verified)
subarachnoid       SCT        21454007    Subarachnoid intracranial hemorrhage
subdural           SCT        35486000    Subdural intracranial hemorrhage
any                SCT        1386000     Intracranial hemorrhage (DICOM CID, pydicom)
=================  =========  ==========  =============================================

Finding site of every label: SCT 12738006 "Brain".
"""

from __future__ import annotations

from pipelines.card import CodeSpec, WindowSpec

SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: Model output order (the RSNA subtypes, then ``any``).
LABELS: tuple[str, ...] = (*SUBTYPES, "any")
ANY = LABELS.index("any")

#: RSNA 2019 competition weights of the weighted multi-label log loss (and of the training BCE).
LOSS_WEIGHTS: dict[str, float] = {**dict.fromkeys(SUBTYPES, 1.0), "any": 2.0}

#: The seed's three windows (WL / WW in HU), one per input channel.
WINDOWS: tuple[WindowSpec, ...] = (
    WindowSpec(name="brain", center=40.0, width=80.0),
    WindowSpec(name="subdural", center=50.0, width=130.0),
    WindowSpec(name="bone", center=600.0, width=2800.0),
)

LOCAL_SCHEME = "99DCMNODE"

CODES: dict[str, CodeSpec] = {
    "epidural": CodeSpec(value="ICH-EDH", scheme=LOCAL_SCHEME, meaning="Epidural hemorrhage"),
    "intraparenchymal": CodeSpec(value="274100004", scheme="SCT", meaning="Cerebral hemorrhage"),
    "intraventricular": CodeSpec(
        value="ICH-IVH", scheme=LOCAL_SCHEME, meaning="Intraventricular hemorrhage"
    ),
    "subarachnoid": CodeSpec(
        value="21454007", scheme="SCT", meaning="Subarachnoid intracranial hemorrhage"
    ),
    "subdural": CodeSpec(
        value="35486000", scheme="SCT", meaning="Subdural intracranial hemorrhage"
    ),
    "any": CodeSpec(value="1386000", scheme="SCT", meaning="Intracranial hemorrhage"),
}

BRAIN = CodeSpec(value="12738006", scheme="SCT", meaning="Brain")
