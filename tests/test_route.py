"""Routing rules: matching each condition kind, choosing the rules that fire, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.config import ConfigError, parse_config
from dicom_node.route.explain import explain_paths, format_explanation
from dicom_node.route.match import (
    CALLING_AE,
    RuleOutcome,
    attribute_values,
    evaluate,
    fired_routes,
    select,
)
from dicom_node.route.rules import Route


def route(name: str = "r", match: dict[str, Any] | None = None, **kw: Any) -> Route:
    """A rule as the config would build it (validated by pydantic)."""
    kw.setdefault("pipeline", "p")
    kw.setdefault("destinations", ["pacs"])
    return Route.model_validate({"name": name, "match": match or {}, **kw})


def check(match: dict[str, Any], attrs: Any, calling_ae: str | None = None) -> RuleOutcome:
    return evaluate(route(match=match), attrs, calling_ae)


def dataset(**attrs: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def by_name(outcomes: list[RuleOutcome]) -> dict[str, RuleOutcome]:
    return {o.route.name: o for o in outcomes}


# --- scalar and list -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("make", [dict, dataset], ids=["dict", "dataset"])
def test_scalar_equal_after_stripping_and_case_sensitive(make: Any) -> None:
    assert check({"Modality": "CT"}, make(Modality="CT ")).matched
    assert not check({"Modality": "CT"}, make(Modality="ct")).matched
    out = check({"Modality": "CT"}, make(Modality="MR"))
    assert not out.matched
    (cond,) = out.conditions
    assert (cond.keyword, cond.actual, cond.ok) == ("Modality", "MR", False)
    assert cond.reason == "Modality is 'MR', not 'CT'"


def test_list_is_any_of_with_readable_reason() -> None:
    rule = {"Modality": ["CR", "DX"]}
    assert check(rule, {"Modality": "DX"}).matched
    out = check(rule, {"Modality": "MR"})
    assert not out.matched
    assert out.conditions[0].expected == "one of ['CR', 'DX']"
    assert out.reason == "Modality is 'MR', not one of ['CR', 'DX']"


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (5, "5.000", True),  # DS text
        (5, "0005", True),  # IS text with leading zeros
        ("1", "1.0", True),  # both strings, both numbers
        (2.5, "2.50", True),
        (5, "5.1", False),
        ("05A", "5A", False),  # not numbers: text comparison
        ("nan", "nan", True),  # text, and float("nan") would never equal itself
        (1000, "1_000", False),  # Python float() accepts this; DICOM does not
    ],
)
def test_numbers_compare_numerically(expected: Any, actual: str, ok: bool) -> None:
    assert check({"SeriesNumber": expected}, {"SeriesNumber": actual}).matched is ok


def test_numbers_from_pydicom_value_types() -> None:
    ds = dataset(SliceThickness="5.000", SeriesNumber="0005", Rows=512)
    assert check({"SliceThickness": 5, "SeriesNumber": [4, 5], "Rows": "512"}, ds).matched
    assert not check({"SliceThickness": 2.5}, ds).matched


def test_list_with_numbers() -> None:
    assert check({"EchoNumbers": [1, 2]}, {"EchoNumbers": "2.0"}).matched
    assert not check({"EchoNumbers": [1, 2]}, {"EchoNumbers": "3"}).matched


def test_person_name_is_matched_as_text() -> None:
    ds = dataset(PatientName="PHANTOM^HEAD")
    assert check({"PatientName": "PHANTOM^HEAD"}, ds).matched
    assert check({"PatientName": {"regex": "^PHANTOM\\^"}}, ds).matched


# --- multi-valued attributes -----------------------------------------------------

IMAGE_TYPES = [
    pytest.param(lambda: dataset(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]), id="dataset"),
    pytest.param(lambda: {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, id="dict-list"),
    pytest.param(lambda: {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, id="dict-joined"),
]


@pytest.mark.parametrize("make", IMAGE_TYPES)
def test_multi_valued_matches_when_any_value_matches(make: Any) -> None:
    attrs = make()
    assert attribute_values(attrs, "ImageType") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert check({"ImageType": "PRIMARY"}, attrs).matched
    assert check({"ImageType": ["LOCALIZER", "AXIAL"]}, attrs).matched
    assert check({"ImageType": {"regex": "^AX"}}, attrs).matched
    assert not check({"ImageType": "DERIVED"}, attrs).matched
    assert not check({"ImageType": ["DERIVED", "LOCALIZER"]}, attrs).matched
    # A scalar is one value, not the joined string.
    assert not check({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, attrs).matched


@pytest.mark.parametrize("make", IMAGE_TYPES)
def test_regex_may_span_values_through_the_joined_string(make: Any) -> None:
    attrs = make()
    assert check({"ImageType": {"regex": r"ORIGINAL\\PRIMARY"}}, attrs).matched
    assert not check({"ImageType": {"regex": r"PRIMARY\\ORIGINAL"}}, attrs).matched
    out = check({"ImageType": "DERIVED"}, attrs)
    assert out.conditions[0].actual == "ORIGINAL\\PRIMARY\\AXIAL"


def test_text_vr_with_backslash_is_not_split_in_a_dict() -> None:
    # ImageComments is LT: a backslash there is text, not a value delimiter.
    attrs = {"ImageComments": "C:\\scans"}
    assert attribute_values(attrs, "ImageComments") == ["C:\\scans"]
    assert not check({"ImageComments": "scans"}, attrs).matched


# --- absent and empty ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["HEAD", ["HEAD", "CHEST"], {"regex": ".*"}, {"range": [None, 10]}],
    ids=["scalar", "list", "regex", "range"],
)
@pytest.mark.parametrize("make", [dict, dataset], ids=["dict", "dataset"])
def test_absent_attribute_fails_with_reason(spec: Any, make: Any) -> None:
    out = check({"BodyPartExamined": spec}, make(Modality="CT"))
    assert not out.matched
    (cond,) = out.conditions
    assert cond.actual is None
    assert cond.reason == "BodyPartExamined is absent"


@pytest.mark.parametrize("spec", ["", {"regex": ".*"}, {"regex": "^$"}])
@pytest.mark.parametrize("empty", ["", "  ", None])
def test_empty_attribute_fails_like_absent(spec: Any, empty: Any) -> None:
    for attrs in ({"BodyPartExamined": empty}, dataset(BodyPartExamined=empty)):
        out = check({"BodyPartExamined": spec}, attrs)
        assert not out.matched
        assert out.reason == "BodyPartExamined is empty"


# --- presence --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "present"),
    [
        ({"ContrastBolusAgent": "IODINE"}, True),
        (dataset(ContrastBolusAgent="IODINE"), True),
        ({}, False),
        (dataset(), False),
        ({"ContrastBolusAgent": ""}, False),
        (dataset(ContrastBolusAgent=""), False),
        (dataset(ContrastBolusAgent=None), False),
        ({"ContrastBolusAgent": []}, False),
    ],
)
def test_presence(attrs: Any, present: bool) -> None:
    assert check({"ContrastBolusAgent": {"present": True}}, attrs).matched is present
    assert check({"ContrastBolusAgent": {"present": False}}, attrs).matched is not present


def test_presence_reasons() -> None:
    out = check({"ContrastBolusAgent": {"present": False}}, {"ContrastBolusAgent": "IODINE"})
    assert out.reason == "ContrastBolusAgent is present ('IODINE'), expected absent or empty"
    out = check({"ContrastBolusAgent": {"present": True}}, {})
    assert out.reason == "ContrastBolusAgent is absent, expected present"


# --- regex -----------------------------------------------------------------------


def test_regex_searches_rather_than_full_matches() -> None:
    rule = {"SeriesDescription": {"regex": "(?i)\\b(pa|ap)\\b"}}
    assert check(rule, {"SeriesDescription": "Chest PA upright"}).matched
    assert check(rule, {"SeriesDescription": "CHEST AP"}).matched
    out = check(rule, {"SeriesDescription": "Chest LAT"})
    assert not out.matched
    assert "does not match regex" in out.reason
    assert "'Chest LAT'" in out.reason


# --- range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "value", "ok"),
    [
        ([0.5, 5], "0.5", True),  # inclusive low
        ([0.5, 5], "5.000", True),  # inclusive high
        ([0.5, 5], "0.4999", False),
        ([0.5, 5], "5.01", False),
        ([None, 5], "-100", True),  # open low
        ([None, 5], "6", False),
        ([2, None], "1e3", True),  # open high, exponent notation
        ([2, None], "1.5", False),
    ],
)
def test_range(bounds: list[Any], value: str, ok: bool) -> None:
    assert check({"SliceThickness": {"range": bounds}}, {"SliceThickness": value}).matched is ok


def test_range_on_pydicom_numbers_and_multi_values() -> None:
    ds = dataset(SliceThickness="2.5", PixelSpacing=["0.7", "3.2"], Rows=512)
    assert check({"SliceThickness": {"range": [2, 3]}}, ds).matched
    assert check({"Rows": {"range": [256, None]}}, ds).matched
    assert check({"PixelSpacing": {"range": [3, 4]}}, ds).matched  # any value


def test_range_non_numeric_value_does_not_match() -> None:
    out = check({"PatientAge": {"range": [18, None]}}, {"PatientAge": "045Y"})
    assert not out.matched
    assert out.reason == "PatientAge is '045Y', not a number"
    out = check({"SliceThickness": {"range": [0.5, 5]}}, {"SliceThickness": "7.5"})
    assert out.reason == "SliceThickness is '7.5', not in [0.5, 5]"


# --- calling AE ------------------------------------------------------------------


def test_calling_ae() -> None:
    rule = route(match={"Modality": "CT"}, calling_ae="ORTHANC")
    assert rule.calling_ae == ["ORTHANC"]
    assert evaluate(rule, {"Modality": "CT"}, "ORTHANC").matched
    assert evaluate(rule, {"Modality": "CT"}, "ORTHANC   ").matched  # AE titles are space-padded
    out = evaluate(rule, {"Modality": "CT"}, "OTHER")
    assert not out.matched
    assert out.evaluable
    assert out.reason == "calling AE is 'OTHER', not one of ['ORTHANC']"
    assert out.conditions[-1].keyword == CALLING_AE


def test_unknown_calling_ae_is_not_evaluable() -> None:
    rule = route(match={"Modality": "CT"}, calling_ae=["ORTHANC", "PACS"])
    out = evaluate(rule, {"Modality": "CT"}, None)
    assert not out.matched
    assert not out.evaluable
    assert out.undecided
    assert out.reason.startswith("cannot tell: calling AE title unknown")
    # When another condition already fails, the verdict is certain.
    out = evaluate(rule, {"Modality": "MR"}, None)
    assert not out.matched
    assert not out.undecided
    assert out.reason == "Modality is 'MR', not 'CT'"


def test_rule_without_calling_ae_ignores_it() -> None:
    assert evaluate(route(match={"Modality": "CT"}), {"Modality": "CT"}, None).matched


# --- selection: order, final, fallback, shadow -----------------------------------

HEAD_CT = {"Modality": "CT", "BodyPartExamined": "HEAD"}


def test_every_matching_rule_fires_in_order() -> None:
    routes = [
        route("any-ct", {"Modality": "CT"}),
        route("chest-xr", {"Modality": ["CR", "DX"]}),
        route("head", {"BodyPartExamined": ["HEAD", "BRAIN"]}),
    ]
    outcomes = select(routes, HEAD_CT, None)
    assert [o.route.name for o in outcomes] == ["any-ct", "chest-xr", "head"]
    assert [o.fired for o in outcomes] == [True, False, True]
    assert [r.name for r in fired_routes(routes, HEAD_CT, None)] == ["any-ct", "head"]
    assert outcomes[1].reason == "Modality is 'CT', not one of ['CR', 'DX']"


def test_final_rule_stops_later_rules() -> None:
    routes = [
        route("chest-xr", {"Modality": "CR"}, final=True),  # final but not matching: no effect
        route("head-ct", HEAD_CT, final=True),
        route("any-ct", {"Modality": "CT"}),
        route("mr", {"Modality": "MR"}),
    ]
    got = by_name(select(routes, HEAD_CT, None))
    assert [r.name for r in fired_routes(routes, HEAD_CT, None)] == ["head-ct"]
    assert got["head-ct"].reason == "matched (final: later rules not tried)"
    assert not got["any-ct"].tried
    assert got["any-ct"].matched
    assert got["any-ct"].reason == "not tried: earlier rule head-ct is final (would have matched)"
    assert got["mr"].reason == "not tried: earlier rule head-ct is final"
    assert got["chest-xr"].tried


def test_fallback_does_not_fire_when_another_rule_matched() -> None:
    """mercure #101: the fallback must not also fire for a series a rule took."""
    routes = [
        route("everything-else", fallback=True),  # position does not matter
        route("head-ct", HEAD_CT),
        route("chest-xr", {"Modality": "CR"}),
    ]
    got = by_name(select(routes, HEAD_CT, None))
    assert [r.name for r in fired_routes(routes, HEAD_CT, None)] == ["head-ct"]
    assert not got["everything-else"].fired
    assert got["everything-else"].reason == "not fired: head-ct matched"


def test_fallback_fires_when_no_rule_matched() -> None:
    routes = [
        route("head-ct", HEAD_CT),
        route("everything-else", fallback=True),
        route("also-archive", fallback=True),
    ]
    mr = {"Modality": "MR"}
    assert [r.name for r in fired_routes(routes, mr, None)] == ["everything-else", "also-archive"]
    assert by_name(select(routes, mr, None))["everything-else"].reason == (
        "fired: no other rule matched"
    )


def test_final_fallback_stops_later_fallbacks() -> None:
    routes = [
        route("head-ct", HEAD_CT),
        route("first", fallback=True, final=True),
        route("second", fallback=True),
    ]
    got = by_name(select(routes, {"Modality": "MR"}, None))
    assert got["first"].fired
    assert not got["second"].fired
    assert got["second"].reason == "not tried: earlier rule first is final"


def test_fallback_with_undecidable_rule_says_so() -> None:
    routes = [
        route("from-orthanc", {"Modality": "CT"}, calling_ae="ORTHANC"),
        route("everything-else", fallback=True),
    ]
    got = by_name(select(routes, HEAD_CT, None))
    assert got["everything-else"].fired
    assert "from-orthanc" in got["everything-else"].reason
    # With the calling AE known, the decision is definite.
    got = by_name(select(routes, HEAD_CT, "ORTHANC"))
    assert got["from-orthanc"].fired
    assert not got["everything-else"].fired


def test_shadow_routes_are_returned_like_others() -> None:
    routes = [
        route("ich-candidate", HEAD_CT, shadow=True, destinations=[]),
        route("head-ct", HEAD_CT),
        route("everything-else", fallback=True),
    ]
    fired = fired_routes(routes, HEAD_CT, None)
    assert [r.name for r in fired] == ["ich-candidate", "head-ct"]
    assert fired[0].shadow
    # A shadow rule does not count for the fallback: adding a shadow candidate must not
    # change production routing, so the fallback still fires next to it.
    assert [r.name for r in fired_routes(routes[:1] + routes[2:], HEAD_CT, None)] == [
        "ich-candidate",
        "everything-else",
    ]


def test_no_routes_fire_nothing() -> None:
    assert select([], HEAD_CT, "ORTHANC") == []
    assert fired_routes([route("mr", {"Modality": "MR"})], HEAD_CT, None) == []


# --- configuration validation through parse_config ------------------------------

CONFIG = """
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.1, port: 104}
pipelines:
  ich: {card: cards/ich.yaml}
  generic: {card: cards/generic.yaml}
routes:
"""


def test_config_routes_parse_and_route(tmp_path: Path) -> None:
    text = (
        CONFIG
        + """
  - name: head-ct
    match:
      Modality: CT
      BodyPartExamined: [HEAD, BRAIN]
      SliceThickness: {range: [null, 5]}
      ContrastBolusAgent: {present: false}
    pipeline: ich
    destinations: [pacs]
  - name: everything-else
    fallback: true
    pipeline: generic
    destinations: [pacs]
"""
    )
    config = parse_config(text, tmp_path)
    head = dataset(Modality="CT", BodyPartExamined="BRAIN", SliceThickness="2.5")
    assert [r.name for r in fired_routes(config.routes, head, None)] == ["head-ct"]
    thick = dataset(Modality="CT", BodyPartExamined="BRAIN", SliceThickness="10")
    assert [r.name for r in fired_routes(config.routes, thick, None)] == ["everything-else"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("match: {Modallity: CT}", "'Modallity' is not a DICOM keyword"),
        ("match: {ReferencedImageSequence: x}", "is a sequence"),
        ('match: {SeriesDescription: {regex: "(unclosed"}}', "invalid regular expression"),
        ("match: {SliceThickness: {range: [5, 1]}}", "range low 5.0 is above high 1.0"),
        ("match: {SliceThickness: {range: [null, null]}}", "range needs at least one bound"),
        ("match: {Modality: CT}\n    fallback: true", "a fallback rule fires when no other"),
        ("calling_ae: ORTHANC\n    fallback: true", "a fallback rule fires when no other"),
        ("match: {Modality: {regexp: CT}}", "needs one of regex, range or present"),
        ("match: {Modality: true}", "Modality"),
    ],
)
def test_config_rejects_bad_rules(tmp_path: Path, rule: str, message: str) -> None:
    text = (
        CONFIG
        + f"""
  - name: bad
    {rule}
    pipeline: ich
    destinations: [pacs]
"""
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(text, tmp_path)
    assert message in str(exc.value)
    assert "routes.0" in str(exc.value)


# --- explain on files ------------------------------------------------------------


def write_dicom(path: Path, **attrs: Any) -> Path:
    """A small but complete DICOM file, with pixel data that explain must not need."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Secret^Patient"
    ds.PatientID = "MRN-4242"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00\x01\x02\x03"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


EXPLAIN_ROUTES = [
    route("head-ct", {"Modality": "CT", "BodyPartExamined": ["HEAD", "BRAIN"]}, pipeline="ich"),
    route("chest-xr", {"Modality": ["CR", "DX"]}, pipeline="cxr"),
    route("phantom", {"PatientName": {"regex": "^PHANTOM"}}, pipeline="qa", shadow=True),
    route("everything-else", fallback=True, pipeline="generic"),
]


@pytest.fixture
def study(tmp_path: Path) -> Path:
    head, chest = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    for i in range(3):
        write_dicom(
            tmp_path / "study" / f"ct{i}.dcm",
            SeriesInstanceUID=head,
            Modality="CT",
            SeriesDescription="HEAD 5mm",
            BodyPartExamined="HEAD",
        )
    write_dicom(
        tmp_path / "study" / "nested" / "mr.dcm",
        SeriesInstanceUID=chest,
        Modality="MR",
        BodyPartExamined="KNEE",
    )
    (tmp_path / "study" / "README.txt").write_text("not an image\n")
    write_dicom(tmp_path / "study" / "zz-noseries.dcm")
    return tmp_path / "study"


def test_explain_groups_files_by_series(study: Path) -> None:
    explanations = explain_paths(EXPLAIN_ROUTES, [study])
    series = {e.series_uid: e for e in explanations if e.note is None}
    skipped = {e.path.name: e.note for e in explanations if e.note is not None}
    assert set(series) == {"1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"}
    assert skipped["README.txt"] == "not a DICOM file"
    assert "no SeriesInstanceUID" in (skipped["zz-noseries.dcm"] or "")

    head = series["1.2.826.0.1.3680043.8.498.1"]
    assert head.files == 3
    assert head.path == study / "ct0.dcm"
    assert dict(head.summary) == {
        "Modality": "CT",
        "SeriesDescription": "HEAD 5mm",
        "BodyPartExamined": "HEAD",
    }
    assert [o.route.name for o in head.fired] == ["head-ct"]

    knee = series["1.2.826.0.1.3680043.8.498.2"]
    assert knee.files == 1
    assert knee.path == study / "nested" / "mr.dcm"
    assert [o.route.name for o in knee.fired] == ["everything-else"]


def test_explain_text(study: Path) -> None:
    text = format_explanation(explain_paths(EXPLAIN_ROUTES, [study]))
    assert "series 1.2.826.0.1.3680043.8.498.1 (CT, 'HEAD 5mm', 'HEAD', 3 files)" in text
    assert "[+] head-ct -> pipeline ich, destinations [pacs]  FIRES" in text
    assert "ok Modality is 'CT'; ok BodyPartExamined is 'HEAD', one of ['HEAD', 'BRAIN']" in text
    assert "[x] chest-xr: Modality is 'CT', not one of ['CR', 'DX']" in text
    assert "[-] everything-else (fallback): not fired: head-ct matched" in text
    assert "[+] everything-else (fallback) -> pipeline generic, destinations [pacs]  FIRES" in text
    assert "README.txt: not a DICOM file" in text
    # No PHI, even for a rule on PatientName.
    assert "[x] phantom: PatientName (value withheld) fails regex '^PHANTOM'" in text
    assert "Secret" not in text
    assert "MRN-4242" not in text


def test_explain_single_file_missing_path_and_calling_ae(tmp_path: Path) -> None:
    ct = write_dicom(tmp_path / "a.dcm", SeriesInstanceUID="1.2.3", Modality="CT")
    routes = [
        route("from-orthanc", {"Modality": "CT"}, calling_ae="ORTHANC"),
        route("everything-else", fallback=True),
    ]
    explained = explain_paths(routes, [ct, tmp_path / "missing.dcm"])
    assert [e.note for e in explained] == [None, "no such file or folder"]
    text = format_explanation(explained)
    assert "[?] from-orthanc: cannot tell: calling AE title unknown" in text
    assert "series 1.2.3 (CT, 1 file) from" in text

    (live,) = explain_paths(routes, [ct], calling_ae="ORTHANC")
    assert [o.route.name for o in live.fired] == ["from-orthanc"]


def test_explain_series_split_over_arguments_counts_once(tmp_path: Path) -> None:
    a = write_dicom(tmp_path / "a" / "1.dcm", SeriesInstanceUID="1.2.3", Modality="CT")
    b = write_dicom(tmp_path / "b" / "2.dcm", SeriesInstanceUID="1.2.3", Modality="CT")
    (only,) = explain_paths([route("ct", {"Modality": "CT"})], [a, b])
    assert (only.files, only.path) == (2, a)


def test_explain_reads_headers_only(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", SeriesInstanceUID="1.2.3", Modality="CT")
    assert "PixelData" in pydicom.dcmread(path)  # the file has pixels ...
    (e,) = explain_paths([route("ct", {"Rows": 2})], [path])
    assert e.fired  # ... which explain does not need to route it


def test_explain_nothing_found(tmp_path: Path) -> None:
    assert explain_paths(EXPLAIN_ROUTES, [tmp_path]) == []
    assert format_explanation([]) == "no DICOM files found\n"


def test_explain_phantom_by_name_withholds_it_and_reports_no_route(tmp_path: Path) -> None:
    phantom = write_dicom(
        tmp_path / "p.dcm", SeriesInstanceUID="1.2.3", Modality="CT", PatientName="PHANTOM^QA"
    )
    text = format_explanation(explain_paths(EXPLAIN_ROUTES[2:3], [phantom]))
    assert "[+] phantom -> pipeline qa, shadow (results kept locally)  FIRES" in text
    assert "ok PatientName (value withheld) satisfies regex '^PHANTOM'" in text
    assert "PHANTOM^QA" not in text

    other = write_dicom(tmp_path / "o.dcm", SeriesInstanceUID="1.2.4", Modality="MR")
    text = format_explanation(explain_paths(EXPLAIN_ROUTES[:2], [other]))
    assert "=> no rule fires: the series is not processed" in text


def test_explain_says_what_a_route_requires_of_the_study(tmp_path: Path) -> None:
    bone = {"series": [{"SeriesDescription": {"regex": "(?i)bone"}}], "when_missing": "discard"}
    routes = [route("ct", {"Modality": "CT"}, require=bone)]
    soft = write_dicom(
        tmp_path / "s" / "1.dcm",
        StudyInstanceUID="1.2.9",
        SeriesInstanceUID="1.2.9.1",
        Modality="CT",
        SeriesDescription="soft",
    )
    text = format_explanation(explain_paths(routes, [soft]))
    assert (
        "requires a series with SeriesDescription regex '(?i)bone': not among the files given; "
        "the node waits for it until the force deadline, then it is discarded"
    ) in text
    write_dicom(
        tmp_path / "s" / "2.dcm",
        StudyInstanceUID="1.2.9",
        SeriesInstanceUID="1.2.9.2",
        Modality="CT",
        SeriesDescription="Bone 1mm",
    )
    text = format_explanation(explain_paths(routes, [tmp_path / "s"]))
    assert text.count("requires: every required series is among the files given") == 2
