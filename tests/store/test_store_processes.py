"""The store across processes: readers during publish, a writer killed mid-version."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from store import ProxyStore

DIM = 4
N_ITEMS = 300


def _const_version(store, version: str, value: float, n=N_ITEMS, publish=True):
    ids = [str(i) for i in range(n)]
    block = np.full((n, DIM), value, np.float32)
    store.stage(version, expected_items=n)
    store.write_batch(version, ids, block, block)
    if publish:
        store.publish(version)


READER = textwrap.dedent(
    """
    import json, sys, time
    from store import ProxyStore
    path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ids = [str(i) for i in range(n)]
    reader = ProxyStore(path, dim=4, read_only=True)
    seen, mixed, reads = set(), 0, 0
    end = time.time() + seconds
    while time.time() < end:
        reader.refresh()
        res = reader.get_many(ids)
        values = set(res.p_coarse[res.found].ravel().tolist())
        if not res.found.all() or len(values) != 1 or values != {float(res.version[1:])}:
            mixed += 1
        seen.add(res.version)
        reads += 1
    print(json.dumps({"seen": sorted(seen), "mixed": mixed, "reads": reads}))
    """
)


def test_reader_process_never_sees_a_mix_of_versions(tmp_path):
    path = tmp_path / "db"
    writer = ProxyStore(path, dim=DIM)
    _const_version(writer, "v1", 1.0)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(N_ITEMS), "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # let the reader start polling
    for k in range(2, 12):
        _const_version(writer, f"v{k}", float(k))
        time.sleep(0.2)
    out, _ = reader.communicate(timeout=60)
    writer.close()
    result = json.loads(out)
    assert result["mixed"] == 0
    assert len(result["seen"]) >= 2, result  # it really watched publishes happen
    assert result["reads"] > 10


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from store import ProxyStore
    path, n = sys.argv[1], int(sys.argv[2])
    store = ProxyStore(path, dim=4)
    store.stage("v2", expected_items=n)
    for start in range(0, n, 10):
        block = np.full((10, 4), 2.0, np.float32)
        store.write_batch("v2", [str(i) for i in range(start, start + 10)], block, block)
        print(start + 10, flush=True)
        time.sleep(0.05)
    store.publish("v2")
    print("published", flush=True)
    """
)


def test_writer_killed_mid_version_leaves_old_version_whole_and_new_resumable(tmp_path):
    path = tmp_path / "db"
    with ProxyStore(path, dim=DIM) as store:
        _const_version(store, "v1", 1.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(N_ITEMS)], stdout=subprocess.PIPE, text=True
    )
    written = 0
    while written < 100:  # kill it a third of the way into v2
        written = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    with ProxyStore(path, dim=DIM) as store:
        assert store.active_version() == "v1"
        res = store.get_many([str(i) for i in range(N_ITEMS)])
        assert res.found.all() and (res.p_coarse == 1.0).all()  # old version whole
        info = {i.version: i for i in store.versions()}["v2"]
        assert info.status == "staged"
        partial = store.count_items("v2")
        assert 100 <= partial < N_ITEMS
        # resumable: re-stage, rewrite everything (idempotent), publish
        _const_version(store, "v2", 2.0)
        assert store.active_version() == "v2"
        assert (store.get_many([str(i) for i in range(N_ITEMS)]).p_coarse == 2.0).all()
