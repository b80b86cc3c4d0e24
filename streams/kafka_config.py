"""Client settings for kafka-python in one place: bootstrap, SASL/TLS passthrough, quirks."""

from __future__ import annotations

from idproxy.settings import Settings
from streams.broker import Broker
from streams.dlq import DLQ_MAX_BYTES


def common_config(settings: Settings, broker: Broker) -> dict:
    """Settings every client shares; SASL/TLS fields pass through when set."""
    k = settings.kafka
    config: dict = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
    }
    optional = {
        "sasl_mechanism": k.sasl_mechanism,
        "sasl_plain_username": k.sasl_plain_username,
        "sasl_plain_password": k.sasl_plain_password,
        "ssl_cafile": k.ssl_cafile,
        "ssl_certfile": k.ssl_certfile,
        "ssl_keyfile": k.ssl_keyfile,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return config


def producer_config(settings: Settings, broker: Broker) -> dict:
    """Durable producer: acks from all replicas, retries, compression from settings."""
    compression = None if settings.kafka.compression == "none" else settings.kafka.compression
    return {
        **common_config(settings, broker),
        "acks": "all",
        "retries": 10,
        "linger_ms": 5,
        "compression_type": compression,
        "max_in_flight_requests_per_connection": 1,  # keeps per-key order across retries
        # dead letters of records near the broker's limit are larger than it (base64)
        "max_request_size": DLQ_MAX_BYTES,
    }


def consumer_config(settings: Settings, broker: Broker, group_id: str | None) -> dict:
    """Manual commits only (at least once); reads from the beginning for a new group."""
    config = {
        **common_config(settings, broker),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": 600_000,
    }
    for key in ("session_timeout_ms", "heartbeat_interval_ms"):
        if key in broker.quirks:
            config[key] = broker.quirks[key]
    return config
