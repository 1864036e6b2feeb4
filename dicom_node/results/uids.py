"""Deterministic DICOM UIDs for the objects the node sends back.

Why deterministic
-----------------
A job can be re-run (retry after a failed C-STORE, a re-forwarded study, an
operator pressing "resend"). If every run minted fresh random UIDs, the PACS
would store a second, third, ... copy of the same AI result and the
radiologist would see duplicate series. Deriving every UID from stable inputs
(the job key, the source SOP Instance UID, the label, ...) makes a resend
carry the *same* Study/Series/SOP Instance UIDs, so the PACS replaces (or
ignores, depending on its duplicate policy) the instance instead of adding
one.

The flip side is that anything that must produce a *different* object must
also be part of the inputs: e.g. :class:`~dicom_node.results.algorithm.AlgorithmInfo`
puts the model name, version and weights hash into its device UID so that a
new model version is a new device.

How
---
By default the UID is the ISO/IEC 9834-8 / ITU-T X.667 "2.25" form of a
name-based (SHA-1, version 5) UUID, i.e. ``2.25.<decimal UUID>``. This root
needs no registered organisation prefix (DICOM PS3.5 §B.2) and is at most
44 characters long. Sites that own a registered root can pass ``prefix``
instead; the suffix is then the decimal SHA-512 of the same canonical input,
truncated to 64 characters (what :func:`pydicom.uid.generate_uid` does).

Note that ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``
*ignores* ``entropy_srcs`` and returns a random ``2.25`` UID, and that its
prefixed form joins the sources with ``""`` (so ``("ab", "c")`` and
``("a", "bc")`` collide). :func:`result_uid` avoids both pitfalls by
serialising the parts as a JSON list before hashing.
"""

from __future__ import annotations

import json
import uuid

from pydicom.uid import UID, generate_uid

__all__ = ["NAMESPACE", "result_uid"]

#: UUID namespace of dicom-node results; changing it would change every UID.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:results")


def result_uid(*parts: str, prefix: str | None = None) -> str:
    """Return a UID that depends only on ``parts`` (and ``prefix``).

    Parameters
    ----------
    *parts : str
        What identifies the object, most general first, e.g.
        ``("sr-series", job_key)`` or ``("sc", job_key, source_uid, label)``.
        Include a literal "kind" part so that different object types built
        from the same job key never share a UID.
    prefix : str or None, optional
        A registered organisation root ending in ``"."`` (at most 54
        characters). ``None`` (default) uses the ``2.25.`` UUID form, which
        needs no registration.

    Returns
    -------
    str
        A valid DICOM UID (at most 64 characters). The same ``parts`` always
        give the same UID, so resending a job's results replaces rather than
        duplicates them in the PACS.

    Raises
    ------
    ValueError
        If no part is given, a part is not a ``str``, or ``prefix`` is not a
        valid UID prefix.
    """
    if not parts:
        raise ValueError(
            "result_uid() needs at least one part: pass what identifies the object, "
            "e.g. result_uid('sr', job_key)"
        )
    bad = [p for p in parts if not isinstance(p, str)]
    if bad:
        raise ValueError(
            f"result_uid() parts must be str, got {[type(p).__name__ for p in bad]}; "
            "convert numbers with str() so the UID does not depend on repr details"
        )
    canonical = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    if prefix is None:
        return str(UID(f"2.25.{uuid.uuid5(NAMESPACE, canonical).int}"))
    try:
        return str(generate_uid(prefix=prefix, entropy_srcs=[canonical]))
    except ValueError as exc:
        raise ValueError(
            f"invalid UID prefix {prefix!r}: use digits and dots ending in '.', "
            "at most 54 characters (e.g. your organisation's registered root + '.'), "
            "or None for the 2.25 UUID form"
        ) from exc
