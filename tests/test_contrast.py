"""The ``contrast`` routing key: the contrast decision on attribute variants real scanners write.

The variants follow what vendors put into the Contrast/Bolus module and the
series labels of abdominal CT (GE "OMNI 350" + route IV, Siemens "APPLIED",
Philips agent + volume, exam-level contrast data copied into the plain phase
of a multiphase exam, technologists' "W/O", "NC", "C+" labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.config import ConfigError, load_config, parse_config
from dicom_node.route.explain import explain_paths, format_explanation
from dicom_node.route.match import fired_routes
from dicom_node.route.rules import Route
from imaging.contrast import ENHANCED, UNENHANCED, contrast_decision, contrast_state


def ct(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def agent_sequence() -> DicomSequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "C-B0322", "SRT", "Iohexol"
    return DicomSequence([item])


VARIANTS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, attributes, expected state, attribute that must be named in the reason)
    (
        "GE portal venous",
        {"ContrastBolusAgent": "OMNI 350", "ContrastBolusRoute": "IV", "SeriesDescription": "PV"},
        ENHANCED,
        "ContrastBolusAgent",
    ),
    (
        "Siemens APPLIED",
        {"ContrastBolusAgent": "APPLIED", "ProtocolName": "Abdomen"},
        ENHANCED,
        "Agent",
    ),
    (
        "Philips agent and volume",
        {"ContrastBolusAgent": "Ultravist 370", "ContrastBolusVolume": "100"},
        ENHANCED,
        "ContrastBolusAgent",
    ),
    (
        "agent code sequence only",
        {"ContrastBolusAgentSequence": agent_sequence()},
        ENHANCED,
        "Sequence",
    ),
    ("route only", {"ContrastBolusRoute": "ORAL"}, ENHANCED, "ContrastBolusRoute"),
    ("volume only", {"ContrastBolusVolume": "80"}, ENHANCED, "ContrastBolusVolume"),
    ("zero volume", {"ContrastBolusVolume": "0"}, UNENHANCED, "no Contrast"),
    ("C+ label, no module", {"SeriesDescription": "ABD/PELVIS C+"}, ENHANCED, "SeriesDescription"),
    (
        "arterial phase label",
        {"SeriesDescription": "Arterial 1.0 B30f"},
        ENHANCED,
        "contrast phase",
    ),
    ("CTA protocol", {"ProtocolName": "CTA ABDOMEN"}, ENHANCED, "ProtocolName"),
    ("plain, nothing", {"SeriesDescription": "ABDOMEN 5.0 B30f"}, UNENHANCED, "no Contrast"),
    ("W/O label", {"SeriesDescription": "ABD W/O"}, UNENHANCED, "non-contrast"),
    ("NC label", {"SeriesDescription": "CT ABD NC 5mm"}, UNENHANCED, "non-contrast"),
    ("German Siemens nativ", {"SeriesDescription": "Abdomen nativ 3.0 B31f"}, UNENHANCED, "non"),
    ("C- label", {"SeriesDescription": "ABD C-"}, UNENHANCED, "non-contrast"),
    (
        "agent copied into the labelled plain phase",
        {"ContrastBolusAgent": "OMNIPAQUE 350", "SeriesDescription": "NON CON ABDOMEN"},
        UNENHANCED,
        "SeriesDescription",
    ),
    (
        "acquired before the injection",
        {
            "ContrastBolusAgent": "OMNIPAQUE 350",
            "ContrastBolusStartTime": "101500",
            "AcquisitionTime": "101212.5",
        },
        UNENHANCED,
        "before ContrastBolusStartTime",
    ),
    (
        "acquired after the injection",
        {
            "ContrastBolusAgent": "OMNIPAQUE 350",
            "ContrastBolusStartTime": "101500",
            "AcquisitionTime": "101610",
        },
        ENHANCED,
        "ContrastBolusAgent",
    ),
    ("agent says NONE", {"ContrastBolusAgent": "NONE"}, UNENHANCED, "says none"),
    ("no attributes at all", {}, UNENHANCED, "no Contrast"),
]


@pytest.mark.parametrize(
    ("attrs", "state", "named"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_contrast_decision_on_vendor_variants(
    attrs: dict[str, Any], state: str, named: str
) -> None:
    decision = contrast_decision(ct(**attrs))
    assert decision.state == state, decision
    assert named in decision.because


def test_words_inside_other_words_do_not_count() -> None:
    # "SYNC" holds NC, "C-SPINE" holds C-, "PVC" holds PV: none of them is a contrast label
    for text in ("SYNC ABDOMEN", "C-SPINE 2mm", "PVC TUBE CHECK"):
        assert contrast_decision(ct(SeriesDescription=text)).because.startswith("no Contrast")


def test_a_mapping_from_the_index_decides_like_the_dataset() -> None:
    attrs = {"Modality": "CT", "ContrastBolusAgent": "IOPAMIDOL 370"}
    assert contrast_state(attrs) == contrast_state(ct(ContrastBolusAgent="IOPAMIDOL 370"))


def rule(match: dict[str, Any], name: str = "r") -> Route:
    return Route.model_validate({"name": name, "match": match, "pipeline": "p"})


def test_routes_send_each_series_to_its_model() -> None:
    routes = [
        rule({"Modality": "CT", "contrast": "enhanced"}, "contrast-model"),
        rule({"Modality": "CT", "contrast": ["unenhanced"]}, "plain-model"),
    ]
    enhanced = ct(ContrastBolusAgent="OMNI 350", ContrastBolusRoute="IV")
    plain = ct(SeriesDescription="ABDOMEN W/O")
    assert [r.name for r in fired_routes(routes, enhanced, None)] == ["contrast-model"]
    assert [r.name for r in fired_routes(routes, plain, None)] == ["plain-model"]


@pytest.mark.parametrize("value", ["yes", "maybe", {"regex": "enh"}, {"present": True}, []])
def test_a_contrast_rule_names_one_of_its_values(value: Any) -> None:
    with pytest.raises(ValueError, match="'contrast' is derived by the node"):
        rule({"contrast": value})


def test_config_error_names_the_key_and_the_values(tmp_path: Path) -> None:
    # PyYAML reads a bare yes as true: the error must say which values the key takes
    text = """
storage: {spool: spool, database_url: "sqlite://"}
pipelines: {p: {card: card.yaml}}
routes:
  - {name: ct, match: {Modality: CT, contrast: yes}, pipeline: p}
"""
    with pytest.raises(ConfigError, match="takes one of enhanced, unenhanced") as exc:
        parse_config(text, tmp_path)
    assert "routes.0" in str(exc.value)


def test_explain_shows_what_decided(tmp_path: Path) -> None:
    ds = ct(
        ContrastBolusAgent="OMNIPAQUE 350",
        SeriesDescription="NON CON ABDOMEN",
        SOPClassUID=CTImageStorage,
        SOPInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        StudyInstanceUID=generate_uid(),
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "ct.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    text = format_explanation(
        explain_paths([rule({"contrast": "enhanced"}, "contrast-model")], [path])
    )
    assert "contrast is 'unenhanced', not 'enhanced'" in text
    assert "SeriesDescription 'NON CON ABDOMEN' names a non-contrast series" in text


@pytest.mark.parametrize(
    ("attrs", "pipelines"),
    [
        (
            {"BodyPartExamined": "ABDOMEN", "ContrastBolusAgent": "OMNIPAQUE 350"},
            ["ct-gb-contrast"],
        ),
        ({"BodyPartExamined": "ABDOMEN", "SeriesDescription": "ABD W/O"}, ["ct-gb-noncontrast"]),
        ({"BodyPartExamined": "HEAD"}, ["ich"]),
        ({"SeriesDescription": "BRAIN 5mm"}, ["ich"]),
        # the hemorrhage model was trained on non-contrast CT: contrast head CT and CTA get none
        ({"BodyPartExamined": "HEAD", "ContrastBolusAgent": "OMNIPAQUE 350"}, ["generic"]),
        ({"BodyPartExamined": "HEAD", "SeriesDescription": "CTA Circle of Willis"}, ["generic"]),
        ({"SeriesDescription": "CTA HEAD NECK"}, ["generic"]),
        ({"Modality": "DX", "BodyPartExamined": "PELVIS"}, ["hip-osteoporosis"]),
        ({"Modality": "CR", "BodyPartExamined": "HIP"}, ["hip-osteoporosis"]),
        ({"Modality": "DX", "BodyPartExamined": "CHEST"}, ["cxr-findings"]),
        ({"Modality": "MR", "BodyPartExamined": "ABDOMEN"}, ["generic"]),
    ],
)
def test_the_shipped_routes_send_each_study_to_its_model(
    attrs: dict[str, Any], pipelines: list[str]
) -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    fired = fired_routes(config.routes, ct(**attrs), "ORTHANC")
    assert [r.pipeline for r in fired] == pipelines


def test_route_explain_says_why_a_contrast_head_ct_gets_no_hemorrhage_result(
    tmp_path: Path,
) -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    path = tmp_path / "cta.dcm"
    ds = ct(BodyPartExamined="HEAD", SeriesDescription="CTA Circle of Willis")
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = (
        CTImageStorage,
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    text = format_explanation(explain_paths(config.routes, [path], "ORTHANC"))
    assert (
        "[x] head-ct: contrast is 'enhanced', not 'unenhanced' "
        "(SeriesDescription 'CTA Circle of Willis' names a contrast phase)"
    ) in text, text
