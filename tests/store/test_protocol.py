"""`ProxyStoreProtocol`: the RocksDB `ProxyStore` implements it; `open_store` builds it."""

import inspect

import numpy as np

from idproxy.settings import Settings
from store import ProxyStore, ProxyStoreProtocol, open_store


def _protocol_methods() -> list[str]:
    return [
        name
        for name, member in vars(ProxyStoreProtocol).items()
        if inspect.isfunction(member) and (not name.startswith("_") or name.startswith("__e"))
    ]


def test_rocksdb_store_has_every_protocol_method_with_the_same_signature():
    names = _protocol_methods()
    assert {"write_batch", "get", "get_many", "publish", "versions", "close"} <= set(names)
    for name in names:
        want = inspect.signature(getattr(ProxyStoreProtocol, name))
        got = inspect.signature(getattr(ProxyStore, name))
        assert list(got.parameters) == list(want.parameters), name
        for p in want.parameters.values():
            assert got.parameters[p.name].default == p.default, (name, p.name)


def test_open_store_builds_the_store_from_the_settings(tmp_path):
    settings = Settings(store={"path": str(tmp_path / "db"), "dtype": "float16"})
    settings.store.retain_versions = 4
    with open_store(settings) as writer:
        assert isinstance(writer, ProxyStoreProtocol)
        assert (writer.path, writer.dim) == (tmp_path / "db", settings.model.id_dim)
        assert (writer.dtype, writer.retain_versions, writer.read_only) == ("float16", 4, False)
        c = np.ones((1, writer.dim), np.float32)
        writer.stage("v1")
        writer.write_batch("v1", ["a"], c, -c)
        writer.publish("v1")
        with open_store(settings, read_only=True) as reader:
            assert reader.read_only and reader.active_version() == "v1"
            np.testing.assert_array_equal(reader.get("a").p_fine, -c[0])
    with open_store(settings, tmp_path / "other", dim=8) as other:
        assert (other.path, other.dim) == (tmp_path / "other", 8)
