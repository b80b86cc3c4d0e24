"""What the trainer publishes for other processes (``ModelPublisher``):

* a re-proxy: a complete ``proxies`` version of the cached items (the same frames and keys
  as the proxy worker's, then its ``VersionCommit``), gated by ``ChurnGate``, and the bundle
  with the trainer's fine head announced on ``models`` (key "bundle"), which the workers
  load for items uploaded after it;
* a snapshot per checkpoint (key "snapshot/<variant>"): the ID table and fine head that
  ``idproxy realign`` aligns to, so re-alignment never reads the trainer's files.

``publish_proxies`` and ``with_heads`` are also used by ``idproxy realign``.
"""

from __future__ import annotations

import logging
import time
import uuid

import torch

from proxy_model.artifacts import Artifact, ArtifactStore, States, module_states
from trainer.item_cache import REPROXY_PREFIX, ItemCache

log = logging.getLogger(__name__)


def publish_proxies(
    producer,
    topics,
    version: str,
    ids: list[str],
    cache: ItemCache,
    p_coarse,
    p_fine,
    *,
    commit: bool = True,
) -> None:
    """Same frames and keys as streams/worker.py, then VersionCommit(expected_items=len(ids));
    ``commit=False`` appends to a version already published (no marker)."""
    from streams.events import ProxyRecordEvent, VersionCommit, encode_frame, to_json

    now = time.time()
    pc, pf = p_coarse.numpy(), p_fine.numpy()
    for k, item_id in enumerate(ids):
        c = cache.items[item_id]
        header = ProxyRecordEvent(
            item_id=item_id,
            proxy_version=version,
            encoder_version=c.encoder_version,
            uploaded_at=c.uploaded_at,
            produced_at=now,
        )
        producer.send(
            topics.proxies,
            key=f"{version}/{item_id}".encode(),
            value=encode_frame(header, {"p_coarse": pc[k], "p_fine": pf[k]}),
        )
    producer.flush()  # every record before the marker
    if commit:
        marker = VersionCommit(version=version, expected_items=len(ids))
        producer.send(topics.control, key=version.encode(), value=to_json(marker))
        producer.flush()


class ChurnGate:
    """Publishes a re-proxy only when the proxies moved enough to matter.

    ``change`` is the mean over items of ‖p_new − p_old‖ / ‖p_old‖, against the last
    *published* version (so slow drift adds up until it crosses ``min_change``); items not
    in that version are left out of it. The first re-proxy of a process is always
    published. ``min_change`` 0 publishes every re-proxy.

    When a re-proxy is skipped, the items the published version lacks (``missing``) are
    appended to it: a worker proxies an upload under the bundle it has applied, which may
    be older than the published version's, so without this an item uploaded around a
    re-proxy could stay out of the active version until the proxies move enough.

    >>> gate = ChurnGate(min_change=0.1)
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> gate.decide(["x", "y"], a)  # nothing published yet
    (True, None)
    >>> gate.published(["x", "y"], a)
    >>> gate.decide(["x", "y", "z"], torch.tensor([[1.0, 0.05], [0.0, 2.0], [5.0, 5.0]]))
    (False, 0.025)
    >>> gate.decide(["x"], torch.tensor([[0.0, 1.0]]))[0]
    True
    >>> gate.missing(["x", "z"])  # z is not in the published version: appended to it
    [1]
    >>> gate.extend(["z"], torch.tensor([[5.0, 5.0]]))
    >>> gate.missing(["x", "z"]), gate.fine.shape[0]
    ([], 3)
    """

    def __init__(self, min_change: float) -> None:
        self.min_change = min_change
        self.index: dict[str, int] = {}
        self.fine: torch.Tensor | None = None
        self.skipped = 0
        self.versions = 0
        self.version = ""  # the last published version

    def decide(self, ids: list[str], fine: torch.Tensor) -> tuple[bool, float | None]:
        """(publish?, change) for the p_fine [N, d] of ``ids``."""
        if self.fine is None:
            return True, None
        both = [(k, self.index[i]) for k, i in enumerate(ids) if i in self.index]
        if not both:
            return True, None
        new_rows, old_rows = (torch.tensor(x) for x in zip(*both, strict=True))
        old = self.fine[old_rows]
        moved = (fine[new_rows] - old).norm(dim=-1) / old.norm(dim=-1).clamp_min(1e-12)
        change = round(float(moved.mean()), 6)
        publish = change >= self.min_change
        self.skipped += not publish
        return publish, change

    def published(self, ids: list[str], fine: torch.Tensor, version: str = "") -> None:
        self.index = {item: k for k, item in enumerate(ids)}
        self.fine = fine.clone()
        self.version = version
        self.versions += 1

    def missing(self, ids: list[str]) -> list[int]:
        """Positions in ``ids`` of the items the published version lacks."""
        return [k for k, i in enumerate(ids) if i not in self.index]

    def extend(self, ids: list[str], fine: torch.Tensor) -> None:
        """Records ``ids`` (p_fine [n, d]) as appended to the published version."""
        base = len(self.index)
        self.index.update({item: base + k for k, item in enumerate(ids)})
        self.fine = torch.cat([self.fine, fine])


def bundle_fine(bundle: Artifact | None, hidden: int, groups: int, dim: int) -> dict | None:
    """The fine-head state of ``bundle`` (the newest announced one) when its shapes fit."""
    fine = bundle.states.get("fine") if bundle is not None else None
    if fine is None:
        return None
    w_in, w_out = fine["adaptor.0.weight"], fine["adaptor.2.weight"]
    if w_in.shape[1] != hidden * groups or w_out.shape[0] != dim:
        log.warning(
            "bundle %s fine head does not fit (D=%d, G=%d, d=%d): not used",
            bundle.id,
            hidden,
            groups,
            dim,
        )
        return None
    return fine


def with_heads(
    bundle: Artifact, note: dict, fine: torch.nn.Module, coarse: torch.nn.Module | None = None
) -> tuple[States, dict]:
    """(states, manifest) of ``bundle`` with ``fine`` (and ``coarse`` if given) replaced.

    Keeps pooling, projector, layer groups and encoder name; ``note`` is added to the
    manifest (``proxy_version``, ``announced``, ...).
    """
    states = dict(bundle.states)
    states.update(module_states({"fine": fine, **({"coarse": coarse} if coarse else {})}))
    dropped = ("id", "created_at", "modules", "kind", "parent")
    keep = {k: v for k, v in bundle.manifest.items() if k not in dropped}
    return states, {**keep, **note}


def snapshot_states(model: torch.nn.Module) -> States:
    """An online model's snapshot for re-alignment: ``item_table`` {ids int64 [N], weight
    [N,d], counts [N]} (rows 1..N: row 0 is the padding/unknown row) and, when the model
    has one, ``fine_head``."""
    table, n = model.item_table, len(model.item_table.ids)
    state = table.state_dict()
    states: States = {
        "item_table": {
            "ids": torch.tensor(table.ids, dtype=torch.int64),
            "weight": state["weight"][1 : n + 1].detach().clone(),
            "counts": state["counts"][1 : n + 1].detach().clone(),
        }
    }
    if getattr(model, "fine_head", None) is not None:
        states.update(module_states({"fine_head": model.fine_head}))
    return states


class ModelPublisher:
    """What the online trainer tells other processes: re-proxy versions (``proxies`` +
    ``control``) with the bundle holding its fine head (``models`` key "bundle"), and the
    snapshots re-alignment reads (``models`` key "snapshot/<variant>")."""

    def __init__(self, settings, broker, producer, topics, variant: str) -> None:
        from streams.model_feed import ModelFeed

        self.producer, self.topics, self.variant = producer, topics, variant
        self.artifacts = ArtifactStore.from_settings(settings)
        self.models = ModelFeed(settings, broker, topics)
        self.churn = ChurnGate(settings.trainer.reproxy_min_change)
        self.proxy_change: float | None = None  # the last re-proxy's movement (ChurnGate)
        self.reproxied_items = 0  # items in the last published re-proxy version
        self._caught_up = False
        self._bundle: Artifact | None = None  # the last one loaded, kept until a newer one

    def newest_bundle(self) -> Artifact | None:
        """The newest announced bundle, checksum verified (None: none announced yet);
        read from the store only when a newer one was announced."""
        from streams.model_feed import BUNDLE_KEY

        if not self._caught_up:
            self.models.catch_up()
            self._caught_up = True
        self.models.poll()
        latest = self.models.latest(BUNDLE_KEY)
        if latest is not None and (self._bundle is None or self._bundle.id != latest.id):
            self._bundle = self.models.load(latest) or self._bundle
        return self._bundle

    @torch.no_grad()
    def reproxy(self, model, cache: ItemCache, checkpoint: str | None) -> str | None:
        """Publishes p_fine of every ready cached item as a new version when the churn gate
        lets it through, then the bundle with this fine head; returns the version."""
        from streams.model_feed import BUNDLE_KEY, publish_artifact

        ids = [i for i in cache.items if cache.ready(i)]
        if not ids:
            return None
        pc, zg, _ = cache.gather(ids, model.shape.dim)
        fine = torch.cat(
            [model.fine_head(pc[k : k + 1024], zg[k : k + 1024]) for k in range(0, len(ids), 1024)]
        )
        publish, self.proxy_change = self.churn.decide(ids, fine)
        if not publish:
            log.info("re-proxy skipped: proxies moved %.4f on average", self.proxy_change)
            self._append_missing(ids, cache, pc, fine)
            return None
        version = f"{REPROXY_PREFIX}{checkpoint}-{uuid.uuid4().hex[:6]}"
        self.churn.published(ids, fine, version)
        publish_proxies(self.producer, self.topics, version, ids, cache, pc, fine)
        self.reproxied_items = len(ids)
        current, bundle = self.newest_bundle(), None
        if current is not None:  # no bundle yet (untrained heads): the workers' heads stay
            note = {
                "proxy_version": version,
                "announced": True,  # published above with its VersionCommit; workers append
                "checkpoint": checkpoint,
                "fine_input": model.fine_head.input_transform,
            }
            states, manifest = with_heads(current, note, model.fine_head)
            bundle = publish_artifact(
                self.producer,
                self.topics.models,
                self.artifacts,
                states,
                manifest,
                key=BUNDLE_KEY,
                producer_name=f"trainer {self.variant}",
                parent=current.id,
            ).id
        log.info("re-proxy %s: %d items (bundle %s)", version, len(ids), bundle)
        return version

    def _append_missing(self, ids: list[str], cache: ItemCache, pc, fine) -> None:
        """Appends the items the published version lacks to it (see ``ChurnGate``)."""
        rows = self.churn.missing(ids)
        if not rows or not self.churn.version:
            return
        late = [ids[k] for k in rows]
        publish_proxies(
            self.producer, self.topics, self.churn.version, late, cache, pc[rows], fine[rows],
            commit=False,
        )  # fmt: skip
        self.churn.extend(late, fine[rows])
        self.reproxied_items = len(self.churn.index)
        log.info("appended %d items to %s", len(late), self.churn.version)

    def snapshot(self, model, checkpoint: str, samples: int) -> None:
        """Announces the checkpoint's ID table and fine head (``snapshot_states``)."""
        from streams.model_feed import publish_artifact, snapshot_key

        publish_artifact(
            self.producer,
            self.topics.models,
            self.artifacts,
            snapshot_states(model),
            {"checkpoint": checkpoint, "variant": self.variant, "samples": samples},
            key=snapshot_key(self.variant),
            producer_name=f"trainer {self.variant}",
        )

    def close(self) -> None:
        self.models.close()
