"""The processor passes the Kafka SASL/TLS settings through to faust."""

from __future__ import annotations

import faust

from idproxy.settings import Settings
from streams.processor import faust_credentials


def test_sasl_settings_become_faust_sasl_credentials():
    s = Settings()
    s.kafka.security_protocol = "SASL_PLAINTEXT"
    s.kafka.sasl_mechanism = "SCRAM-SHA-256"
    s.kafka.sasl_plain_username = "svc"
    s.kafka.sasl_plain_password = "secret"
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("svc", "secret")
    assert creds.mechanism.value == "SCRAM-SHA-256"
    assert creds.protocol.value == "SASL_PLAINTEXT"


def test_ssl_settings_become_faust_ssl_credentials():
    s = Settings()
    s.kafka.security_protocol = "SSL"
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL"


def test_plaintext_needs_no_credentials():
    assert faust_credentials(Settings()) is None
