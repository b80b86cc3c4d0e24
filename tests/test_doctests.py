"""The runnable examples in module docstrings."""

import doctest
import importlib

import pytest

MODULES = [
    "idproxy.settings",
    "proxy_model.pooling",
    "proxy_model.alignment",
    "proxy_model.layer_groups",
    "trainer.streaming_metrics",
    "streams.offset_gaps",
    "streams.sample_buffers",
    "streams.sample_rows",
    "streams.bad_events",
    "streams.events",
    "streams.sample_batch",
    "idproxy.supervisor",
    "idproxy.demo_report",
    "proxy_model.heads",
    "streams.processor",
    "trainer.growing_embedding",
    "benchmarks.bench_online",
    "trainer.sample_decoder",
    "idproxy.prometheus",
    "trainer.fusion",
    "trainer.optim",
    "proxy_model.normaliser",
    "idproxy.demo_faults",
    "streams.schemas",
    "idproxy.proxy_wire",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
