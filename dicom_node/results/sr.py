"""Findings of one pipeline run as a TID 1500 Comprehensive 3D SR.

One SR per (study, pipeline run): a DICOM Comprehensive 3D SR document with
the TID 1500 "Measurement Report" template, stored into the *source* study as
a new series. TID 1500 is the template OHIF, 3D Slicer, dcmqi and highdicom
read back as measurements, which is why findings are encoded as measurement
groups rather than free text.

Content tree (codes are defined and sourced in :mod:`dicom_node.results.codes`)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")          TID 1500
      HAS CONCEPT MOD Language of Content = en-US                  TID 1204
      HAS OBS CONTEXT Observer Type = (121007, DCM, "Device")      TID 1002
      HAS OBS CONTEXT Device Observer UID/Name/Manufacturer/Model  TID 1004
      HAS CONCEPT MOD Procedure Reported = CID 100 code per modality
      CONTAINS (126010, DCM, "Imaging Measurements")
        CONTAINS (125007, DCM, "Measurement Group")   one per Finding:
          TID 1410 "Planar ROI Measurements and Qualitative Evaluations"
          when the finding has a box, else TID 1501 "Measurement and
          Qualitative Evaluation Group":
          HAS OBS CONTEXT (112039, DCM, "Tracking Identifier") "<label> #n"
          HAS OBS CONTEXT (112040, DCM, "Tracking Unique Identifier")
          CONTAINS (121071, DCM, "Finding") = the card's finding code
          HAS CONCEPT MOD (363698007, SCT, "Finding Site") = card's site
            HAS CONCEPT MOD (272741003, SCT, "Laterality") = CID 244 code
          HAS CONCEPT MOD (111001, DCM, "Algorithm Name"),
            (111003, DCM, "Algorithm Version"),
            (122405, DCM, "Algorithm Manufacturer"),
            (111002, DCM, "Algorithm Parameters") pipeline + weights sha256  TID 4019
          [TID 1410 only] CONTAINS (111030, DCM, "Image Region") SCOORD
            POLYLINE, 5 points (the box corners, closed), pixel coordinates
            SELECTED FROM IMAGE (260753009, SCT, "Source") = the box's image
          [TID 1501 only] CONTAINS IMAGE (121112, DCM, "Source of Measurement")
          CONTAINS NUM (111012, DCM, "Certainty of Finding") = probability
            x 100, unit (%, UCUM, "Percent")                        TID 300
            INFERRED FROM IMAGE (121112, DCM, "Source of Measurement") per
            supporting source image
          CONTAINS CODE <finding code> = (52101004, SCT, "Present") or
            (272519000, SCT, "Absent")                              CID 240/241

Why these choices
-----------------
* A closed 5-point POLYLINE on concept (111030, DCM, "Image Region") is what
  OHIF's SR adapters (``@cornerstonejs/adapters`` RectangleROI, registered
  for ``DCM:111030`` POLYLINE with 4 or 5 points) hydrate as a rectangle;
  the closed form (first point repeated) also reads as a closed outline in
  viewers that know nothing about rectangles.
* Certainty of Finding is DICOM's concept for an algorithm's confidence,
  and a NUM in % is listed by generic TID 1500 readers; the threshold decision
  is a separate coded Present/Absent so that consumers need not know the
  card's threshold.
* Tracking UIDs, Series and SOP Instance UIDs derive from the job key
  (:func:`dicom_node.results.uids.result_uid`), so a resent job replaces its
  SR in the PACS instead of adding a duplicate.
* Preliminary (``PreliminaryFlag=PRELIMINARY``), ``UNVERIFIED`` and
  ``COMPLETE``: the content is the algorithm's whole output but no human has
  signed it.
* Contributing Equipment Sequence carries the algorithm (Manufacturer,
  Manufacturer's Model Name = model name, Software Versions = model version,
  Device UID) with purpose (109102, DCM, "Processing Equipment"), as the
  IHE AI Results (AIR) profile asks result objects to identify the AI model.
  highdicom also adds the source's acquisition equipment and itself.
  General Equipment says Manufacturer = ``algorithm.manufacturer``,
  Manufacturer's Model Name = model name and Software Versions = (model
  version, dicom-node version), because that is what PACS and viewers show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code as DicomCode
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results import codes
from dicom_node.results.algorithm import AlgorithmInfo
from dicom_node.results.uids import result_uid
from pipelines.base import Box, Code, Finding

__all__ = [
    "algorithm_contributing_equipment",
    "build_notice_sr",
    "build_sr",
    "finding_tracking_uid",
    "sr_series_instance_uid",
    "sr_sop_instance_uid",
]


def sr_series_instance_uid(job_key: str) -> str:
    """Series Instance UID of the SR series of a job (deterministic, see :mod:`.uids`)."""
    return result_uid("sr-series", job_key)


def sr_sop_instance_uid(job_key: str) -> str:
    """SOP Instance UID of the SR of a job (deterministic, see :mod:`.uids`)."""
    return result_uid("sr-instance", job_key)


def finding_tracking_uid(job_key: str, index: int) -> str:
    """Tracking Unique Identifier of the ``index``-th finding of a job."""
    return result_uid("sr-tracking", job_key, str(index))


def algorithm_contributing_equipment(algorithm: AlgorithmInfo) -> hd.ContributingEquipment:
    """Contributing Equipment item identifying the AI model (IHE AIR).

    Purpose of reference is (109102, DCM, "Processing Equipment"): the model
    processed the source instances to create new ones. The Device UID is set
    after construction because highdicom's constructor has no argument for it.
    It is a standard (Type 3) attribute of the Contributing Equipment Sequence
    item in current DICOM, but the dicom3tools 2022 release installed here
    predates it, so dciodvfy reports a *warning* ("not present in standard
    DICOM IOD ... Standard Extended SOP Class"), not an error.
    """
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_versions,
        contribution_description=(
            f"AI model {algorithm.name} {algorithm.version} run by the "
            f"{algorithm.pipeline} pipeline of dicom-node {algorithm.software_version} "
            f"(weights sha256 {algorithm.weights_sha256})"
        )[:1024],
    )
    item.DeviceUID = algorithm.device_uid
    return item


def _concept(code: Code) -> hd.sr.CodedConcept:
    """A pipeline :class:`~pipelines.base.Code` as a highdicom coded concept."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _index_sources(sources: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """Map SOP Instance UID -> header, checking that the sources can carry an SR."""
    if not sources:
        raise ValueError(
            "build_sr() needs the headers of the source images (read with "
            "stop_before_pixels=True): the SR copies patient/study from them and "
            "lists them as evidence"
        )
    by_uid: dict[str, pydicom.Dataset] = {}
    for ds in sources:
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise ValueError(
                    f"source header is missing {keyword}; pass the headers of the DICOM "
                    "images the pipeline read, not derived datasets"
                )
        by_uid.setdefault(str(ds.SOPInstanceUID), ds)
    studies = {str(ds.StudyInstanceUID) for ds in by_uid.values()}
    if len(studies) != 1:
        raise ValueError(
            f"build_sr() makes one SR per study but the sources span {len(studies)} "
            f"studies ({sorted(studies)}); call it once per study with that study's sources"
        )
    return by_uid


def _box_polyline(box: Box, source: pydicom.Dataset) -> np.ndarray:
    """Closed 5-point polyline (column, row) of a box, checked against the image size."""
    if not (box.x0 < box.x1 and box.y0 < box.y1):
        raise ValueError(
            f"Box on {box.sop_instance_uid} has x0={box.x0}, x1={box.x1}, y0={box.y0}, "
            f"y1={box.y1}; it needs x0 < x1 and y0 < y1 (top-left, bottom-right corners)"
        )
    rows, cols = int(source.Rows), int(source.Columns)
    if box.x0 < 0 or box.y0 < 0 or box.x1 > cols or box.y1 > rows:
        raise ValueError(
            f"Box ({box.x0}, {box.y0})-({box.x1}, {box.y1}) lies outside the "
            f"{cols}x{rows} (columns x rows) image {box.sop_instance_uid}; clip it to "
            f"[0, {cols}] x [0, {rows}] in the pipeline"
        )
    return np.array(
        [
            [box.x0, box.y0],
            [box.x1, box.y0],
            [box.x1, box.y1],
            [box.x0, box.y1],
            [box.x0, box.y0],
        ],
        dtype=np.float64,
    )


def _referenced_uids(finding: Finding, by_uid: dict[str, pydicom.Dataset]) -> list[str]:
    """Source images a finding references: its own list, plus the box's image; all if none."""
    uids = list(dict.fromkeys(finding.source_sop_instance_uids))
    if finding.box is not None and finding.box.sop_instance_uid not in uids:
        uids.append(finding.box.sop_instance_uid)
    if not uids:
        uids = list(by_uid)
    unknown = [u for u in uids if u not in by_uid]
    if unknown:
        raise ValueError(
            f"Finding {finding.label!r} references SOP Instance UIDs that are not among "
            f"the sources passed to build_sr(): {unknown}; pass the headers of every image "
            "the pipeline used"
        )
    return uids


def _outline(
    finding: Finding, first_uid: str, by_uid: dict[str, pydicom.Dataset]
) -> tuple[pydicom.Dataset, np.ndarray]:
    """The image and closed polyline a finding is placed on: its box, else the whole image.

    A finding without a box was inferred from whole images (a slice or
    radiograph classifier): its outline is the border of the first image it
    references, the pipeline's most telling one.
    """
    if finding.box is not None:
        source = by_uid[finding.box.sop_instance_uid]
        return source, _box_polyline(finding.box, source)
    source = by_uid[first_uid]
    rows, cols = float(source.Rows), float(source.Columns)
    corners = [[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]]
    return source, np.array(corners, dtype=np.float64)


def _source_for_region(source: pydicom.Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
    )


class _GroupArguments(TypedDict):
    """The arguments the two measurement group templates (TID 1410, TID 1501) share."""

    tracking_identifier: hd.sr.TrackingIdentifier
    finding_type: hd.sr.CodedConcept
    algorithm_id: hd.sr.AlgorithmIdentification
    finding_sites: list[hd.sr.FindingSite] | None
    measurements: list[hd.sr.Measurement]
    qualitative_evaluations: list[hd.sr.QualitativeEvaluation]


def _measurement_group(
    index: int,
    finding: Finding,
    by_uid: dict[str, pydicom.Dataset],
    algorithm: AlgorithmInfo,
    job_key: str,
) -> (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    """One measurement group for a finding, placed on an image so that viewers can show it.

    * A present finding, or any finding with a box, is a TID 1410 planar ROI
      group: the region is the box, or the whole image for a finding
      inferred from whole images (see :func:`_outline`). The region is
      repeated under the certainty (TID 300 "inferred from"; TID 1419 is
      extensible, highdicom's builder refuses it so it is appended after):
      OHIF rebuilds a tracked, editable rectangle from a group's first NUM
      and the SCOORD under it, and fails on a group whose NUM has none.
    * An absent finding without a box is a TID 1501 group with its source
      images, the certainty inferred from the outline of the first: OHIF
      shows it on that image with its certainty but does not track it as a
      measurement (a radiologist's list of measurements holds what was found).

    OHIF 3.13 cannot open an SR at all when one of its measurements has no
    coordinates, hence coordinates on every group.

    After the finding in words (:func:`_comment`), the group says how far to
    trust it: the card's metrics for its label in its unit (one TEXT per
    split, held-out data first), and the label's advice when it is present.
    """
    finding_code = _concept(finding.code)
    if finding.laterality is not None and finding.finding_site is None:
        raise ValueError(
            f"Finding {finding.label!r} has a laterality but no finding_site; in TID 1500 "
            "laterality qualifies the finding site, so give the card label a finding_site"
        )
    finding_sites = None
    if finding.finding_site is not None:
        finding_sites = [
            hd.sr.FindingSite(
                anatomic_location=_concept(finding.finding_site),
                laterality=_concept(finding.laterality) if finding.laterality else None,
            )
        ]
    ref_uids = _referenced_uids(finding, by_uid)
    source, outline = _outline(finding, ref_uids[0], by_uid)
    anchor = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=_source_for_region(source),
    )
    planar = finding.box is not None or finding.present
    certainty = hd.sr.Measurement(
        name=codes.CERTAINTY_OF_FINDING,
        # Rounded so that 0.87 is written as 87 and not 87.00000000000001
        # (DS is limited to 16 characters).
        value=round(float(finding.probability) * 100.0, 4),
        unit=codes.PERCENT,
        referenced_images=[
            hd.sr.SourceImageForMeasurement(
                referenced_sop_class_uid=by_uid[u].SOPClassUID,
                referenced_sop_instance_uid=u,
            )
            for u in ref_uids
        ],
        referenced_coordinates=None if planar else [anchor],
    )
    presence = hd.sr.QualitativeEvaluation(
        name=finding_code,
        value=codes.PRESENT if finding.present else codes.ABSENT,
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=finding_tracking_uid(job_key, index),
        identifier=f"{finding.label} #{index + 1}",
    )
    common: _GroupArguments = {
        "tracking_identifier": tracking,
        "finding_type": finding_code,
        "algorithm_id": _algorithm_id(algorithm),
        "finding_sites": finding_sites,
        "measurements": [certainty],
        "qualitative_evaluations": [presence],
    }
    group: (
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if planar:
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=_source_for_region(source),
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=region, **common
        )
        (num,) = (item for item in group[0].ContentSequence if item.ValueType == "NUM")
        num.ContentSequence.append(anchor)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=by_uid[u].SOPClassUID,
                    referenced_sop_instance_uid=u,
                )
                for u in ref_uids
            ],
            **common,
        )
    items = group[0].ContentSequence
    items.append(_comment(finding))
    items.extend(
        _text(codes.MODEL_PERFORMANCE, line)
        for line in algorithm.validation_for(finding.label, finding.unit)
    )
    if finding.present and finding.advice:
        items.append(_text(codes.RECOMMENDATION, finding.advice))
    return group


def _text(name: DicomCode, value: str) -> hd.sr.TextContentItem:
    """A TEXT item CONTAINed by its parent (UT holds far more than these sentences)."""
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _comment(finding: Finding) -> hd.sr.TextContentItem:
    """The finding in words, as a DCM 121106 "Comment" (both templates are extensible).

    Viewers that show a measurement's label and not its coded content show
    this: OHIF titles a tracked measurement with it, so the radiologist's
    list reads "Cardiomegaly: present, certainty 87 %" rather than a bare
    rectangle.
    """
    state = "present" if finding.present else "absent"
    return hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=f"{finding.code.meaning}: {state}, certainty {finding.probability * 100:.0f} %",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


#: Coding schemes defined by DICOM PS3.16 Table 8-1 that need no identification item.
STANDARD_SCHEMES = frozenset({"DCM", "SCT", "SRT", "LN", "UCUM", "RADLEX", "FMA", "NCIt", "ACR"})


def _identify_local_schemes(sr: pydicom.Dataset, findings: Sequence[Finding]) -> None:
    """Declare non-standard coding schemes in Coding Scheme Identification Sequence (0008,0110).

    A card may code a finding in a documented local scheme (e.g. ``99DCMNODE``
    where no verified SNOMED CT concept exists); PS3.3 C.12.1.1.2 asks that
    such a private designator (prefix ``99``) be identified, so that a reader
    knows whose codes they are.
    """
    schemes = sorted(
        {codes.LOCAL_SCHEME}  # the model-validation items' concepts
        | {
            code.scheme
            for f in findings
            for code in (f.code, f.finding_site, f.laterality)
            if code is not None and code.scheme not in STANDARD_SCHEMES
        }
    )
    items = []
    for scheme in schemes:
        item = pydicom.Dataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName = "dicom-node local codes (documented in the model card)"
        item.CodingSchemeResponsibleOrganization = "dicom-node project"
        items.append(item)
    sr.CodingSchemeIdentificationSequence = items


def build_sr(
    findings: Sequence[Finding],
    sources: Sequence[pydicom.Dataset],
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_number: int,
    instance_number: int = 1,
    not_analysed: Sequence[tuple[str, str]] = (),
) -> pydicom.Dataset:
    """Encode one pipeline run's findings as a TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    findings : sequence of pipelines.base.Finding
        What the pipeline found; one measurement group each, in this order.
    sources : sequence of pydicom.Dataset
        Headers (``stop_before_pixels=True`` is enough) of every image the
        pipeline analysed, all from one study. Patient and study attributes
        are copied from the first; all are listed as evidence; each finding
        references those in ``Finding.source_sop_instance_uids`` (plus its
        box's image), or all of them when it names none.
    algorithm : AlgorithmInfo
        The model that produced the findings.
    job_key : str
        Stable identifier of the job (e.g. study UID + pipeline + card
        version). The Series, SOP Instance and tracking UIDs derive from it,
        so building again with the same key gives the same UIDs and a resend
        replaces the SR in the PACS.
    series_number : int
        Series Number of the new SR series (positive).
    instance_number : int, optional
        Instance Number of the SR within its series (default 1).
    not_analysed : sequence of (str, str), optional
        (SOP Instance UID or file name, reason) of the images the pipeline
        left out (``PipelineResult.skipped``). Said in a DCM 121106 "Comment"
        among the document's qualitative evaluations, so a reader knows that
        the findings do not cover them (an excluded image with a metal
        implant reads as "not analysed", never as "no finding").

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR` in Explicit VR Little
        Endian, ready for ``dcmwrite``/C-STORE, in the source study.

    Raises
    ------
    ValueError
        If there are no findings (there is nothing to report; send no SR), no
        sources, sources from several studies, a finding referencing an image
        that is not among the sources, a box outside its image, or a
        laterality without a finding site.
    """
    if not findings:
        raise ValueError(
            "build_sr() got no findings: TID 1500 needs at least one measurement group. "
            "Report absent findings as Finding(present=False) or skip the SR for this job"
        )
    if not job_key:
        raise ValueError("build_sr() needs a non-empty job_key: the SR's UIDs derive from it")
    by_uid = _index_sources(sources)
    groups = [_measurement_group(i, f, by_uid, algorithm, job_key) for i, f in enumerate(findings)]
    sr = _document(
        groups,
        by_uid,
        algorithm,
        job_key,
        series_number,
        instance_number,
        not_analysed=not_analysed_text(algorithm, not_analysed),
    )
    _identify_local_schemes(sr, findings)
    return sr


def not_analysed_text(
    algorithm: AlgorithmInfo, skipped: Sequence[tuple[str, str]], limit: int = 1024
) -> str | None:
    """ "Not analysed by <model>: <n> image(s): <uid>: <reason>; ..." (None when none was left out).

    Only UIDs or file names and the pipeline's reasons: no patient data.
    Cut at ``limit`` characters (the words a viewer shows; the node's log has
    every reason).
    """
    if not skipped:
        return None
    reasons = "; ".join(f"{ident}: {why}" for ident, why in skipped)
    text = (
        f"Not analysed by {algorithm.name} {algorithm.version}, so not covered by the findings "
        f"above: {len(skipped)} image(s): {reasons}"
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_notice_sr(
    reason: str,
    sources: Sequence[pydicom.Dataset],
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_number: int,
) -> pydicom.Dataset:
    """An SR saying that the AI did **not** analyse these images, and why.

    Silence must never read as a negative: when a routed series cannot be
    analysed (no usable image, a view the model does not take, a model that
    cannot run), the study still gets an SR, with the same UIDs a result
    would have had (a later successful run replaces it). Its one TID 1501
    group, tracked as "AI analysis not performed", references the images and
    carries ``reason`` as a DCM 121106 "Comment" (what OHIF shows as the
    group's label); it has no finding and no certainty, so nothing in it can
    be read as present or absent.

    Parameters
    ----------
    reason : str
        In words a radiologist reads ("no femoral neck found on the image").
    sources, algorithm, job_key, series_number
        As for :func:`build_sr`.
    """
    if not job_key:
        raise ValueError("build_notice_sr() needs a non-empty job_key")
    by_uid = _index_sources(sources)
    first = next(iter(by_uid.values()))
    text = f"AI analysis not performed by {algorithm.name} {algorithm.version}: {reason}"
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=finding_tracking_uid(job_key, 0), identifier="AI analysis not performed"
        ),
        algorithm_id=_algorithm_id(algorithm),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=first.SOPClassUID,
                referenced_sop_instance_uid=first.SOPInstanceUID,
            )
        ],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=text[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    sr = _document([group], by_uid, algorithm, job_key, series_number, 1, notice=True)
    _identify_local_schemes(sr, [])
    return sr


def _model_statements(
    algorithm: AlgorithmInfo, not_analysed: str | None = None
) -> hd.sr.ContainerContentItem:
    """TID 1500's document-level qualitative evaluations: where the weights come from, what
    the result may be used for (the words a viewer shows, not only the series name), and
    which images the findings do not cover."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items = [
        _text(codes.TRAINING_DATA, algorithm.provenance_statement),
        _text(codes.INTENDED_USE, algorithm.use_statement),
    ]
    if not_analysed is not None:
        items.append(_text(codes.COMMENT, not_analysed))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=[
            f"pipeline={algorithm.pipeline}",
            f"weights-sha256={algorithm.weights_sha256}",
        ],
    )


def _document(
    groups: Sequence[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    by_uid: dict[str, pydicom.Dataset],
    algorithm: AlgorithmInfo,
    job_key: str,
    series_number: int,
    instance_number: int,
    *,
    notice: bool = False,
    not_analysed: str | None = None,
) -> pydicom.Dataset:
    """The TID 1500 document around the measurement groups, in the source study."""
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE_OBSERVER),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=f"{algorithm.name} {algorithm.version}",
            manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.name,
        ),
    )
    modalities = {str(ds.get("Modality", "")) for ds in by_uid.values()}
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.procedure_reported(modalities),
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(_model_statements(algorithm, not_analysed))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(by_uid.values()),
        content=report[0],
        series_instance_uid=sr_series_instance_uid(job_key),
        series_number=series_number,
        sop_instance_uid=sr_sop_instance_uid(job_key),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=algorithm.series_description("notice" if notice else "SR"),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_versions,
        contributing_equipment=[algorithm_contributing_equipment(algorithm)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # The model's Device UID goes into the Contributing Equipment item only:
    # General Equipment (0018,1002) is Type 3 in current DICOM but unknown to
    # the dicom3tools release we validate with, which would flag the SR as a
    # Standard Extended SOP Class.
    return sr
