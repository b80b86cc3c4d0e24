"""Settings: env vars with the IDPROXY_ prefix, the config file, precedence."""

import json

from idproxy.settings import load_settings


def test_defaults_bind_loopback():
    assert load_settings().store.http_host == "127.0.0.1"


def test_env_sets_nested_field(monkeypatch):
    monkeypatch.setenv("IDPROXY_KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("IDPROXY_STORE_RETAIN_VERSIONS", "7")
    s = load_settings()
    assert s.kafka.bootstrap == "broker:9092"
    assert s.store.retain_versions == 7


def test_config_file_is_read_and_env_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"store": {"retain_versions": 9, "http_port": 1234}}))
    monkeypatch.setenv("IDPROXY_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("IDPROXY_STORE_HTTP_PORT", "4321")
    s = load_settings()
    assert s.store.retain_versions == 9
    assert s.store.http_port == 4321
