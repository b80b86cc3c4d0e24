"""ProxyStore: round trips, versions, retention, idempotence, corruption, bad input."""

import numpy as np
import pytest

from store import (
    CorruptValueError,
    IncompleteVersionError,
    InvalidVectorError,
    ProxyStore,
    StoreError,
    UnknownVersionError,
    VersionStateError,
)

DIM = 8


def vectors(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, DIM)).astype(np.float32), rng.standard_normal((n, DIM)).astype(
        np.float32
    )


def write_version(store, version, ids, seed=0, publish=True):
    c, f = vectors(len(ids), seed)
    store.stage(version)
    store.write_batch(version, ids, c, f)
    if publish:
        store.publish(version, expected_items=len(ids))
    return c, f


@pytest.fixture
def store(tmp_path):
    with ProxyStore(tmp_path / "db", dim=DIM) as s:
        yield s


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 1e-2)])
def test_round_trip_in_both_dtypes(tmp_path, dtype, tol):
    with ProxyStore(tmp_path / dtype, dim=DIM, dtype=dtype) as s:
        c, f = write_version(s, "v1", ["a", "b", "c"])
        rec = s.get("b")
        assert rec.version == "v1"
        np.testing.assert_allclose(rec.p_coarse, c[1], atol=tol)
        np.testing.assert_allclose(rec.p_fine, f[1], atol=tol)
        res = s.get_many(["c", "missing", "a"])
        assert res.found.tolist() == [True, False, True]
        np.testing.assert_allclose(res.p_coarse[[0, 2]], c[[2, 0]], atol=tol)
        assert not res.p_coarse[1].any()  # a miss is zeros plus found=False


def test_missing_item_and_empty_store_are_misses_not_errors(store):
    assert store.get("x") is None
    assert store.get_many(["x", "y"]).found.tolist() == [False, False]
    write_version(store, "v1", ["a"])
    assert store.get("x") is None


def test_publish_switches_active_and_keeps_previous_readable(store):
    c1, _ = write_version(store, "v1", ["a", "b"], seed=1)
    c2, _ = write_version(store, "v2", ["a", "b"], seed=2)
    assert store.active_version() == "v2" and store.previous_version() == "v1"
    np.testing.assert_array_equal(store.get("a").p_coarse, c2[0])
    np.testing.assert_array_equal(store.get("a", version="v1").p_coarse, c1[0])
    statuses = {i.version: i.status for i in store.versions()}
    assert statuses == {"v1": "retired", "v2": "active"}


def test_incomplete_version_is_not_published(store):
    write_version(store, "v1", ["a", "b"])
    c, f = vectors(1)
    store.stage("v2", expected_items=2)
    store.write_batch("v2", ["a"], c, f)
    with pytest.raises(IncompleteVersionError, match="1 items, expected 2"):
        store.publish("v2")
    assert store.active_version() == "v1"
    with pytest.raises(VersionStateError, match="not published"):
        store.get("a", version="v2")  # readers never see a staged version


def test_rollback_and_retention(tmp_path):
    with ProxyStore(tmp_path / "db", dim=DIM, retain_versions=2) as s:
        for k in range(1, 5):
            write_version(s, f"v{k}", ["a"], seed=k)
        s.rollback("v3")
        assert s.active_version() == "v3" and s.previous_version() == "v4"
        removed = s.gc()
        assert sorted(removed) == ["v1", "v2"]  # active v3 and previous v4 stay
        assert [i.version for i in s.versions()] == ["v3", "v4"]
        with pytest.raises(UnknownVersionError):
            s.rollback("v1")
        assert s.get_many(["a"], version="v4").found.all()


def test_gc_never_collects_active_or_previous(tmp_path):
    with ProxyStore(tmp_path / "db", dim=DIM, retain_versions=2) as s:
        for k in range(1, 5):
            write_version(s, f"v{k}", ["a"], seed=k)
        s.rollback("v1")  # active v1 (oldest), previous v4
        s.gc()
        kept = {i.version for i in s.versions()}
        assert {"v1", "v4"} <= kept


def test_writes_are_idempotent(store):
    c, f = vectors(3)
    store.stage("v1")
    store.write_batch("v1", ["a", "b", "c"], c, f)
    before = {k: v for k, v in store.db.items()}
    store.stage("v1")
    store.write_batch("v1", ["a", "b", "c"], c, f)
    after = {k: v for k, v in store.db.items()}
    assert before == after
    assert store.count_items("v1") == 3


def test_published_versions_are_immutable(store):
    write_version(store, "v1", ["a"])
    c, f = vectors(1)
    with pytest.raises(VersionStateError, match="immutable"):
        store.write_batch("v1", ["a"], c, f)
    with pytest.raises(VersionStateError):
        store.stage("v1")


def test_corruption_is_detected(store):
    write_version(store, "v1", ["a", "b"])
    key = b"prx/v1/a"
    raw = bytearray(store.db[key])
    raw[-3] ^= 0x40  # flip one bit in the payload
    store.db[key] = bytes(raw)
    with pytest.raises(CorruptValueError):
        store.get("a")
    res = store.get_many(["a", "b"])
    assert res.corrupt.tolist() == [True, False]
    assert res.found.tolist() == [False, True]
    assert not res.p_coarse[0].any()  # never returned as garbage
    store.db[key] = bytes(raw[:-4])  # truncated value
    assert store.get_many(["a"]).corrupt.tolist() == [True]


def test_value_copied_under_another_version_is_detected(store):
    write_version(store, "v1", ["a"])
    write_version(store, "v2", ["a"], seed=3)
    store.db[b"prx/v2/a"] = store.db[b"prx/v1/a"]
    assert store.get_many(["a"]).corrupt.tolist() == [True]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda c, f: (c[:, :4], f[:, :4]), "shape"),
        (lambda c, f: (np.where(c > 0, np.nan, c).astype(np.float32), f), "NaN or Inf"),
        (lambda c, f: (c, np.full_like(f, np.inf)), "NaN or Inf"),
        (lambda c, f: (c.astype(np.int32), f), "floating"),
        (lambda c, f: (c.tolist(), f), "floating"),
        (lambda c, f: (c, f[:1]), "rows"),
    ],
)
def test_bad_vectors_are_rejected_with_nothing_written(store, make, match):
    store.stage("v1")
    c, f = vectors(2)
    bad_c, bad_f = make(c, f)
    with pytest.raises(InvalidVectorError, match=match):
        store.write_batch("v1", ["a", "b"], bad_c, bad_f)
    assert store.count_items("v1") == 0


def test_unknown_version_and_bad_names_are_rejected(store):
    c, f = vectors(1)
    with pytest.raises(UnknownVersionError):
        store.write_batch("never-staged", ["a"], c, f)
    with pytest.raises(StoreError, match="invalid version"):
        store.stage("bad/version")
    with pytest.raises(InvalidVectorError, match="item id"):
        store.stage("v1") or store.write_batch("v1", [""], c, f)
    assert store.count_items("v1") == 0


def test_discard_removes_a_partial_version(store):
    write_version(store, "v1", ["a"])
    write_version(store, "v2", ["a", "b"], publish=False)
    store.discard("v2")
    assert [i.version for i in store.versions()] == ["v1"]
    assert store.count_items("v2") == 0


def test_features_and_model_registry(store):
    z = np.arange(6, dtype=np.float32)
    store.put_features("item-1", "enc-abc", {"z": z, "z_groups": z.reshape(2, 3)})
    got = store.get_features("item-1", "enc-abc")
    np.testing.assert_array_equal(got["z_groups"], z.reshape(2, 3))
    assert store.get_features("item-1", "enc-other") is None
    with pytest.raises(InvalidVectorError):
        store.put_features("item-1", "enc-abc", {"z": np.array([np.nan], np.float32)})
    store.register_model("proxy", "proxy-123", {"kind": "proxy"}, "/models/proxy-123")
    assert store.get_model("proxy", "proxy-123")["weights_path"] == "/models/proxy-123"


def test_read_only_instance_follows_the_writer(tmp_path):
    path = tmp_path / "db"
    with ProxyStore(path, dim=DIM) as writer:
        write_version(writer, "v1", ["a"], seed=1)
        reader = ProxyStore(path, dim=DIM, read_only=True)
        assert reader.active_version() == "v1"
        c2, _ = write_version(writer, "v2", ["a"], seed=2)
        reader.refresh()
        np.testing.assert_array_equal(reader.get("a").p_coarse, c2[0])
        with pytest.raises(StoreError, match="read-only"):
            reader.stage("v3")
        reader.close()


def test_unwritable_directory_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open store"):
        ProxyStore(blocker / "db", dim=DIM)


def test_second_writer_on_the_same_store_is_refused(tmp_path):
    with (
        ProxyStore(tmp_path / "db", dim=DIM),
        pytest.raises(StoreError, match="cannot open store for writing"),
    ):
        ProxyStore(tmp_path / "db", dim=DIM)


def test_published_version_takes_appends_but_never_changes_a_value(store):
    c, f = write_version(store, "v1", ["a"])
    new_c, new_f = vectors(1, seed=9)
    store.write_batch("v1", ["b"], new_c, new_f, append=True)  # a new upload
    store.write_batch("v1", ["a"], c[:1], f[:1], append=True)  # a redelivered record
    assert store.get_many(["a", "b"]).found.all()
    with pytest.raises(VersionStateError, match="would change"):
        store.write_batch("v1", ["a", "c"], new_c.repeat(2, 0), new_f.repeat(2, 0), append=True)
    assert store.get("c") is None  # nothing of the rejected batch was written


def test_appends_to_a_published_version_update_its_item_count(tmp_path):
    store = ProxyStore(tmp_path / "db", dim=DIM)
    write_version(store, "v1", [str(i) for i in range(10)])
    assert store.version_info("v1").item_count == 10
    c, f = vectors(10, seed=3)
    ids = [str(i) for i in range(10, 20)]
    twice = np.concatenate([c, c[:2]]), np.concatenate([f, f[:2]])
    store.write_batch("v1", ids + ids[:2], *twice, append=True)
    assert store.version_info("v1").item_count == 20  # a duplicate in the batch counts once
    store.write_batch("v1", ids, c, f, append=True)  # redelivered: no new item
    assert store.version_info("v1").item_count == 20
    (info,) = store.versions()
    assert info.item_count == store.count_items("v1") == 20 and info.status == "active"
    with pytest.raises(VersionStateError):  # a rejected append changes no count
        store.write_batch("v1", ["0", "new"], *vectors(2, seed=7), append=True)
    assert store.version_info("v1").item_count == 20
    store.close()
    with ProxyStore(tmp_path / "db", dim=DIM) as again:  # durable with the values
        assert again.version_info("v1").item_count == 20
