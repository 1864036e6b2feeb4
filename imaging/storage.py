"""Which SOP classes hold images: what the receiver checks and what routes send to models."""

from __future__ import annotations

from pydicom.uid import UID

#: Computed Radiography, Digital X-Ray for presentation, for processing
RADIOGRAPH_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
}


def is_image_storage(sop_class: str) -> bool:
    """Whether a SOP class is an image IOD, whose Pixel Data are required (type 1)."""
    return "Image Storage" in UID(sop_class).name
