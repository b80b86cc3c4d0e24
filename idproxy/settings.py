"""The one home of configuration: pydantic-settings, `IDPROXY_*` env vars, an optional file.

Precedence (highest first): explicit keyword arguments, environment variables, the config
file named by ``IDPROXY_CONFIG_FILE`` (TOML, JSON or YAML), then the defaults below.

Env vars address a section and a field with one underscore after the prefix, e.g.
``IDPROXY_KAFKA_BOOTSTRAP=host:9092`` sets ``settings.kafka.bootstrap`` and
``IDPROXY_STORE_RETAIN_VERSIONS=5`` sets ``settings.store.retain_versions``.

>>> s = Settings()
>>> s.store.http_host
'127.0.0.1'
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CACHE_DIR = Path(os.environ.get("IDPROXY_CACHE_DIR", Path.home() / ".cache" / "idproxy"))


TINY_MODEL = {"id_dim": 8, "coarse_hidden": 16, "adaptor_hidden": 16}  # the tiny profile


class ModelSettings(BaseModel):
    """The content encoder (MLLM M) and the proxy heads.

    ``encoder="tiny"`` is the tiny profile: a random two-layer encoder with the same
    interface (loads in well under a second; tests and the quick demo), and unless set
    otherwise the small widths of ``TINY_MODEL`` (d = 8, 16-wide heads).

    >>> m = ModelSettings(encoder="tiny", coarse_hidden=32)
    >>> m.id_dim, m.coarse_hidden, m.adaptor_hidden
    (8, 32, 16)
    """

    encoder: Literal["real", "tiny"] = Field(
        "real", description="real: pretrained weights; tiny: the random test encoder profile"
    )
    lm_path: str | None = Field(
        None, description="Local HF causal LM / VLM folder; None uses the packaged SmolLM2-135M"
    )
    vision: Literal["efficientnet-lite0", "none"] = "efficientnet-lite0"
    image_size: int = Field(224, description="Image side in pixels fed to the vision tower")
    n_visual_tokens: int = Field(16, description="Visual tokens per image (a square number)")
    max_text_tokens: int = Field(64, description="Item text is truncated to this many tokens")
    id_dim: int = Field(32, description="d: the ranker's ID-embedding size")
    coarse_hidden: int = Field(256, description="Hidden width of the coarse head phi")
    adaptor_hidden: int = Field(128, description="Hidden width of the fine adaptor phi~")
    n_layer_groups: int = Field(3, description="k of the k-means layer partition")
    layer_sample_items: int = Field(64, description="Items used to pick the layer groups")
    encode_batch_size: int = 32
    device: str = Field("auto", description="'auto' picks cuda when present, else cpu")
    encoder_train_mode: Literal["frozen", "lora", "full"] = "frozen"
    lora_rank: int = 8
    artifacts_dir: str = Field(
        str(CACHE_DIR / "artifacts"),
        description="The artefact store (bundles, snapshots): a folder or any fsspec URL",
    )
    artifacts_keep: int = Field(
        3, ge=0, description="Artefacts kept per name (the newest); older ones deleted; 0 = all"
    )

    @model_validator(mode="before")
    @classmethod
    def _tiny_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("encoder") == "tiny":
            return {**TINY_MODEL, **data}
        return data


class Stage1Settings(BaseModel):
    """Stage-1 proxy alignment (paper eq. 1)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 512
    epochs: int = 80
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Targets held out to keep φ's best epoch (0 = last epoch)"
    )
    tau_c: float = Field(0.07, description="PAL temperature")
    min_updates: int = Field(5, description="tau: keep ID embeddings updated at least this often")
    folds: int = Field(5, description="cross-validation folds of the held-out evaluation")
    seed: int = 0


class KafkaSettings(BaseModel):
    """Kafka client settings; SASL/TLS fields pass straight through to the clients."""

    bootstrap: str | None = Field(None, description="Use this cluster (broker-ladder rung 1)")
    rung: int | None = Field(None, description="Force a broker-ladder rung (1-4)")
    embedded_tansu: bool = Field(False, description="The bootstrap is Tansu: apply its quirks")
    topic_prefix: str = ""
    compression: Literal["gzip", "none"] = "gzip"
    request_timeout_ms: int = 30000
    outage_backoff_s: float = Field(
        1.0, description="Wait after a poll failed because the broker is away, then poll again"
    )
    partitions: int = 4
    replication_factor: int = 1
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    quarantine_deaths: int = Field(
        3,
        ge=1,
        description="A record that killed its consumer (proxy worker, materializer, "
        "processor, trainer) this many times alone is dead-lettered",
    )
    stream_stall_s: float = Field(
        15.0, description="Processor: re-read a partition idle this long short of its end"
    )
    kafka_home: str | None = Field(None, description="Apache Kafka install (rung 3); else cache")
    jars_dir: str = str(CACHE_DIR / "kafka-4.1.0" / "libs")


class ProcessorSettings(BaseModel):
    """The faust stream processor (`idproxy processor`): how it batches training samples."""

    samples_batch_max: int = Field(
        256, ge=1, description="Samples per frame on `samples`: a full buffer is sent at once"
    )
    samples_linger_ms: int = Field(
        50, ge=1, description="A partition's buffer is sent once its oldest entry is this old"
    )
    metrics_port: int = Field(
        0, description="Prometheus port (on metrics_host) of idproxy_processor_ready; 0 = off"
    )


class StoreSettings(BaseModel):
    """The RocksDB proxy store and its HTTP read API."""

    path: str = str(CACHE_DIR / "store")
    dtype: Literal["float16", "float32"] = "float32"
    retain_versions: int = 3
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    max_request_bytes: int = 1 << 20
    max_batch_items: int = 1000
    refresh_interval_s: float = Field(
        1.0, ge=0, description="The read API catches up with the writer at most this often"
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the read API requires (IDPROXY_STORE_API_TOKEN); "
        "mandatory when http_host is not a loopback address",
    )


class WorkerSettings(BaseModel):
    """Proxy workers (consumers of the items topic)."""

    batch_max_items: int = 32
    batch_max_wait_ms: int = 500
    max_text_chars: int = 4000
    max_image_bytes: int = 4 << 20
    max_image_pixels: int = Field(
        16_000_000, description="Images declaring more pixels (w*h) are refused before decoding"
    )
    image_formats: list[str] = Field(
        ["JPEG", "PNG", "GIF", "WEBP"], description="PIL formats an upload may use"
    )
    image_draft_side: int = Field(
        512, description="JPEGs decode at a reduced DCT scale keeping both sides >= this"
    )
    image_root: str | None = Field(
        None, description="Directory that image_path events may read from; None rejects paths"
    )
    metrics_port: int = Field(0, description="Prometheus port (on metrics_host); 0 = off")
    group_id: str = "idproxy-workers"


class MaterializerSettings(BaseModel):
    """`idproxy materialize`: the proxies and control topics -> the store."""

    group_id: str = "idproxy-materializer"
    batch_max_records: int = Field(2000, description="Records written per store batch")
    metrics_port: int = Field(0, description="Prometheus port (on metrics_host); 0 = off")


class TrainerSettings(BaseModel):
    """The CTR ranker, the offline Table-1 benchmark and the online Stage-2 trainer."""

    history_len: int = 20
    batch_size: int = Field(1024, description="Mini-batch of the Table-1 rankers")
    lr: float = Field(3e-3, description="Learning rate of the Table-1 rankers")
    epochs: int = 2
    seeds: int = 5
    new_item_fraction: float = 0.2
    warmup_k: int = 5
    test_fraction: float = Field(0.2, description="Last share of events (in time) evaluated")
    side_dim: int = Field(8, description="Width of each side-feature embedding")
    cross_layers: int = 2
    attention_hidden: int = 32
    mlp_hidden: tuple[int, ...] = (64, 32)
    warmup_epochs: int = Field(1, description="Epochs per chunk of the prequential warm-up")
    prequential_chunks: int = Field(
        10, ge=1, description="Time-ordered chunks of the Table-1 prequential warm-up"
    )
    table1_stage1_epochs: int = Field(40, description="Stage-1 epochs of the Table-1 fits")
    table1_protocols: tuple[Literal["random", "time"], ...] = Field(
        ("random", "time"), description="Cold-start protocols of `bench table1`"
    )
    cb2cf_steps: int = Field(300, description="Full-batch steps of the v2 content->ID MLP")
    quick_events: int = Field(4000, description="Events used by `bench table1 --quick`")
    threads: int = Field(
        2, ge=1, description="torch threads of the online trainer and the ranker benchmarks"
    )
    # ---- the online Stage-2 trainer (`idproxy trainer`, trainer/online.py)
    online_batch_size: int = Field(
        256, description="Samples per online mini-batch (whole records: the last may overshoot)"
    )
    online_lr: float = Field(1e-3, description="Adam learning rate of the online trainer")
    online_adaptor_lr_scale: float = Field(
        0.1,
        ge=0,
        description="Learning rate of the fine head (φ̃, gate) relative to online_lr (0 = frozen)",
    )
    online_seed: int = Field(0, description="Seed of the online ranker's initialisation")
    online_fine_input: Literal["none", "signed_log"] = Field(
        "signed_log", description="Transform of raw z_groups before the online adaptor"
    )
    batch_max_wait_ms: int = Field(1000, description="Max wait to fill a mini-batch")
    initial_rows: int = Field(1024, description="Initial rows of each growing ID table")
    id_init_std: float = Field(
        0.0,
        ge=0,
        description="Std of a new user/item ID row in every ranker (0: a new id starts as the"
        " mean item; docs/TRAINER.md measures 0.01 against 0)",
    )
    new_item_interactions: int = Field(
        5, description="An item is new while it has fewer interactions than this"
    )
    new_item_age_s: float = Field(86400.0, description="... or while younger than this (s)")
    eval_window: int = Field(10_000, description="Samples in each windowed AUC/LogLoss")
    report_every_batches: int = Field(20, description="A metrics.jsonl line every N batches")
    report_every_s: float = Field(30.0, description="... or every T seconds")
    checkpoint_every_batches: int = 50
    checkpoint_every_s: float = Field(120.0, description="... or every T seconds")
    checkpoints_kept: int = Field(3, description="Checkpoint versions kept on disk")
    dedup_window: int = Field(200_000, description="Recent sample keys kept for de-duplication")
    reproxy_every_checkpoints: int = Field(1, description="Re-proxy every K checkpoints")
    reproxy_every_s: float = Field(0.0, description="... or every T seconds (0 = off)")
    reproxy_min_change: float = Field(
        0.05,
        ge=0,
        description="A re-proxy is published only when p_fine moved at least this much since"
        " the last published version (mean relative L2; 0 = every re-proxy)",
    )
    # ---- the re-alignment job (`idproxy realign`, trainer/realign_job.py)
    realign_interval_s: int = 600
    realign_holdout_fraction: float = Field(0.2, description="Held-out share of kept ids")
    realign_tolerance: float = Field(0.0, description="Allowed held-out regression")
    realign_continuity: bool = Field(
        True, description="Rotate a new coarse version onto the current one's basis (Procrustes)"
    )


class DemoSettings(BaseModel):
    """`idproxy demo`: the whole system on a MovieLens-100K replay."""

    ratings: int = Field(100_000, description="Ratings replayed (MovieLens-100K has 100,000)")
    replay_s: float = Field(
        300.0, description="Wall-clock length of the live replay after go-live (time compressed)"
    )
    history_fraction: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Share of the ratings that form the history period `idproxy bootstrap` "
        "deploys on before go-live (0 = no bootstrap: untrained heads go live)",
    )
    trainer_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of the demo's trainers: the proxy worker gets the CPU it would "
        "have on its own machine when both want it",
    )
    quick_ratings: int = Field(4000, description="Ratings replayed by `demo --quick`")
    quick_replay_s: float = Field(45.0, description="Replay length of `demo --quick`")
    workers: int = Field(1, description="Proxy workers (consumer-group members)")
    upload_lead_days: float = Field(
        30.0, description="Items are uploaded this many dataset days before their first rating"
    )
    quick_upload_lead_days: float = Field(
        1.0, description="... in `demo --quick` (6 days replayed)"
    )
    realign_interval_s: float = Field(90.0, description="Re-alignment schedule in the demo")
    quick_realign_interval_s: float = Field(20.0, description="... in `demo --quick`")
    checkpoint_every_s: float = Field(30.0, description="Trainer checkpoint (and re-proxy) period")
    quick_checkpoint_every_s: float = Field(10.0, description="... in `demo --quick`")
    progress_every_s: float = Field(10.0, description="A progress line every T seconds")
    catalogue_timeout_s: float = Field(
        600.0, description="Max wait for the launch catalogue to be servable before the clicks"
    )
    quick_catalogue_timeout_s: float = Field(120.0, description="... in `demo --quick`")
    drain_timeout_s: float = Field(600.0, description="Max wait for the pipeline to catch up")
    quick_drain_timeout_s: float = Field(180.0, description="... in `demo --quick`")
    ready_timeout_s: float = Field(300.0, description="Max wait for a component to start")


class Settings(BaseSettings):
    """Root settings object; one section per subsystem."""

    model_config = SettingsConfigDict(
        env_prefix="IDPROXY_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    run_dir: str = "runs"
    cache_dir: str = str(CACHE_DIR)
    metrics_host: str = Field(
        "127.0.0.1",
        description="Bind address of the worker's and trainer's Prometheus endpoints "
        "(0.0.0.0 lets another host or container scrape them)",
    )
    model: ModelSettings = ModelSettings()
    stage1: Stage1Settings = Stage1Settings()
    kafka: KafkaSettings = KafkaSettings()
    processor: ProcessorSettings = ProcessorSettings()
    store: StoreSettings = StoreSettings()
    worker: WorkerSettings = WorkerSettings()
    materializer: MaterializerSettings = MaterializerSettings()
    trainer: TrainerSettings = TrainerSettings()
    demo: DemoSettings = DemoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, init_kwargs=_read_config_file())
        return init_settings, env_settings, file_source


def _read_config_file() -> dict[str, Any]:
    """Reads the file named by IDPROXY_CONFIG_FILE (TOML, JSON or YAML); {} when unset."""
    name = os.environ.get("IDPROXY_CONFIG_FILE")
    if not name:
        return {}
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"IDPROXY_CONFIG_FILE={name} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text) or {}
    raise ValueError(f"config file {name}: use .toml, .json or .yaml")


def load_settings(**overrides: Any) -> Settings:
    """Builds the settings from defaults, the config file, env vars and ``overrides``."""
    return Settings(**overrides)


def tiny_profile(settings: Settings) -> Settings:
    """``settings`` with the tiny encoder profile (``IDPROXY_MODEL_ENCODER=tiny``); values
    set explicitly (environment, file) are kept, the profile fills the rest."""
    data = settings.model.model_dump(exclude_unset=True) | {"encoder": "tiny"}
    return settings.model_copy(update={"model": ModelSettings(**data)})
