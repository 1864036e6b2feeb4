"""config.yaml parsing: defaults, relative paths, errors that name the key, live reload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, LiveConfig, RetryPolicy, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_paths_resolve_against_its_folder() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.node.ae_title == "DICOM_NODE"
    assert config.storage.spool == REPO / "var" / "spool"
    assert config.storage.database_url == f"sqlite:///{REPO}/var/dicom-node.db"
    assert config.pipelines["generic"].card == REPO / "models" / "generic-demo" / "card.yaml"
    assert [r.name for r in config.routes][:1] == ["chest-xr"]
    assert config.node.allows("ORTHANC", "127.0.0.1")
    assert not config.node.allows("ORTHANC", "10.1.2.3")
    assert not config.node.allows("SOMEONE", "127.0.0.1")


def test_empty_config_gets_defaults_and_admits_nobody(tmp_path: Path) -> None:
    config = parse_config("", tmp_path)
    assert config.node.port == 11112
    assert config.storage.min_free_disk_mb == 1024
    assert config.dispatch.retry == RetryPolicy()
    assert not config.node.allows("ANY", "127.0.0.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node: {port: 70000}", "node.port: Input should be less than or equal to 65535"),
        ("node: {ae_tite: X}", "node.ae_tite: unknown key"),
        ("node: {ae_title: 'WAY_TOO_LONG_AE_TITLE'}", "node.ae_title"),
        (
            "node: {peers: [{ae_title: PACS, host: 'not-an-ip'}]}",
            "node.peers.0.host: 'not-an-ip' is not an IP",
        ),
        ("storage: {min_free_disk_mb: -1}", "storage.min_free_disk_mb"),
        (
            "pipelines: {x: {card: c.yaml, device: gpu}}",
            "pipelines.x.device: 'gpu' is not a device",
        ),
        (
            "routes: [{name: r, pipeline: nope, shadow: true}]",
            "routes.0 (r).pipeline: 'nope' is not in pipelines",
        ),
        (
            "pipelines: {p: {card: c.yaml}}\nroutes: [{name: r, pipeline: p}]",
            "routes.0 (r): needs destinations, or shadow: true",
        ),
        (
            "pipelines: {p: {card: c.yaml}}\nroutes: [{name: r, pipeline: p, destinations: [pacs]}]",
            "'pacs' is not in destinations",
        ),
        ("dispatch: {retry: {multiplier: 0.5}}", "dispatch.retry.multiplier"),
        ("monitoring: {port: 0}", "monitoring.port: Input should be greater than or equal to 1"),
        ("monitoring: {prot: 9110}", "monitoring.prot: unknown key"),
        ("- just a list", "must be a mapping"),
        ("node: [unclosed", "not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, tmp_path)
    assert message in str(exc.value)


def test_peer_cidr_and_several_ae_titles_per_peer(tmp_path: Path) -> None:
    config = parse_config(
        "node: {peers: [{ae_title: PACS_STORE, host: 10.0.0.0/24}, {ae_title: PACS_QR, host: 10.0.0.5}]}",
        tmp_path,
    )
    assert config.node.allows("PACS_STORE", "10.0.0.77")
    assert config.node.allows("PACS_QR", "10.0.0.5")
    assert not config.node.allows("PACS_QR", "10.0.0.6")
    assert not config.node.allows("PACS_STORE", "10.0.1.1")


def test_retry_delay_is_exponential_and_capped() -> None:
    policy = RetryPolicy(initial_seconds=5, multiplier=2, max_seconds=30, max_attempts=10)
    assert [policy.delay(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_live_config_applies_good_edits_and_keeps_running_config_on_bad_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node: {port: 1111}\n")
    live = LiveConfig(path)
    seen: list[tuple[object, str | None]] = []
    live.listeners.append(lambda old, new, error: seen.append((new, error)))
    assert live().node.port == 1111
    assert live.check() is False  # unchanged file: nothing to do

    path.write_text("node: {port: 1111}\ncompletion: {study_quiet_seconds: 5}\n")
    assert live.reload() is True
    assert live().completion.study_quiet_seconds == 5

    path.write_text("completion: {study_quiet_secs: 5}\n")
    with caplog.at_level(logging.ERROR):
        assert live.reload() is False
    assert live().completion.study_quiet_seconds == 5  # the running config stays
    assert "completion.study_quiet_secs: unknown key" in caplog.text
    assert seen[-1][0] is None and "study_quiet_secs" in str(seen[-1][1])
