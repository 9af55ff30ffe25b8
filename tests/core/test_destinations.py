"""The export destinations document (RADSTREAM_EXPORT_DESTINATIONS): parsed, checked, never printed."""

import json

import pytest

from radstream.destinations import DicomwebDestination, DimseDestination, InvalidDestinations, parse_destinations

SECRET = "Bearer s3cr3t-value-of-the-pacs"


def _doc(*entries: dict[str, object]) -> str:
    return json.dumps(list(entries))


DIMSE = {"tenant": "alpha", "name": "pacs", "kind": "dimse", "host": "10.0.0.5", "port": 104, "ae_title": "PACS"}
WEB = {
    "tenant": "alpha",
    "name": "archive",
    "kind": "dicomweb",
    "url": "https://pacs.example.org/dicom-web/",
    "headers": {"Authorization": SECRET},
}


def test_both_kinds_parse_with_their_defaults() -> None:
    dimse, web = parse_destinations(_doc(DIMSE, WEB))
    assert isinstance(dimse, DimseDestination) and dimse.calling_ae_title == "RADSTREAM" and dimse.port == 104
    assert isinstance(web, DicomwebDestination) and web.url == "https://pacs.example.org/dicom-web"
    assert web.header_values() == {"Authorization": SECRET}
    assert SECRET not in repr(web) and SECRET not in str(web.model_dump())


@pytest.mark.parametrize("text", [None, "", "  ", "[]"])
def test_nothing_configured_is_no_destination(text: str | None) -> None:
    assert parse_destinations(text) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**DIMSE, "kind": "ftp"}, "[0]"),
        ({**DIMSE, "port": 0}, "[0.dimse.port]"),
        ({**DIMSE, "ae_title": "A" * 17}, "[0.dimse.ae_title]"),
        ({**DIMSE, "ae_title": "BAD\\AE"}, "AE title"),
        ({**WEB, "url": "ftp://x"}, "[0.dicomweb.url]"),
        ({**WEB, "tenant": "Not A Tenant"}, "[0.dicomweb.tenant]"),
        ({**WEB, "name": "-starts-with-dash"}, "[0.dicomweb.name]"),
        ({**WEB, "unknown": 1}, "[0.dicomweb.unknown]"),
        ({k: v for k, v in DIMSE.items() if k != "host"}, "[0.dimse.host]"),
    ],
)
def test_a_bad_entry_is_refused_saying_where(entry: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDestinations) as caught:
        parse_destinations(_doc(entry))
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)  # an error never quotes a header value


def test_not_json_or_not_an_array_is_refused() -> None:
    with pytest.raises(InvalidDestinations, match="not JSON"):
        parse_destinations("[{")
    with pytest.raises(InvalidDestinations, match="a JSON array"):
        parse_destinations(json.dumps(DIMSE))


def test_two_destinations_of_one_name_in_a_tenant_are_refused() -> None:
    with pytest.raises(InvalidDestinations, match="a second destination named 'pacs'"):
        parse_destinations(_doc(DIMSE, {**WEB, "name": "pacs"}))
    assert len(parse_destinations(_doc(DIMSE, {**DIMSE, "tenant": "beta"}))) == 2  # per tenant


def test_filters_by_model_and_modality() -> None:
    (everything,) = parse_destinations(_doc(DIMSE))
    assert everything.takes("lesion_detector", {"CT"}) and everything.takes(None, set())
    (ct_only,) = parse_destinations(_doc({**DIMSE, "models": ["lesion_detector"], "modalities": ["CT", "MR"]}))
    assert ct_only.takes("lesion_detector", {"CT"})
    assert ct_only.takes("lesion_detector", {"DX", "MR"})  # one of the study's modalities is enough
    assert not ct_only.takes("lesion_detector", {"DX"})
    assert not ct_only.takes("another_model", {"CT"})


def test_the_local_stack_retries_an_export_for_minutes_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.local.stack import LOCAL_EXPORT_RETRY_BUDGET_S, local_defaults
    from radstream.settings import Settings

    assert Settings().export_retry_budget_s == 3600  # production's default
    assert local_defaults(Settings()).export_retry_budget_s == LOCAL_EXPORT_RETRY_BUDGET_S == 300
    monkeypatch.setenv("RADSTREAM_EXPORT_RETRY_BUDGET_S", "42")
    assert local_defaults(Settings()).export_retry_budget_s == 42
