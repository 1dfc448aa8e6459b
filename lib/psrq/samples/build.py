"""Stage: build training samples in Spark.

interactions + semantic_ids (of the codebook version in use: codebooks.version, else the one
marked current) -> item vocabulary (Delta) -> per user,
every event with its last N earlier positives (psrq.samples.layout.stream_samples on the
executors, over the events sorted by user and time) -> Parquet per split, row groups sized for Petastorm, and a manifest
the trainer checks (codebook version, vocabulary size, spaces, K, L, N)."""
from __future__ import annotations

import bisect
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial, reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from psrq.catalog.current import version_in_use
from psrq.config import Config
from psrq.data.validation import check_interactions
from psrq.errors import InputValidationError, Problem, StorageError
from psrq.job import JobContext
from psrq.samples.content import CONTENT_FILE, write_content
from psrq.samples.layout import (
    FIRST_INDEX,
    OOV,
    VOCAB_ORDER,
    SamplesManifest,
    build_settings,
    qarm_codes,
    quantile_rank,
    row_bytes,
    sorted_samples,
    stream_samples,
)
from psrq.samples.layout import ORDER as HISTORY_ORDER
from psrq.schemas import ITEM_ID, ITEM_VOCAB, samples_schema
from psrq.spark import side_jobs
from psrq.storage import AppTxn, fs

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def split_cutoffs(interactions: DataFrame, valid_from: float, test_from: float,
                  n: int | None = None) -> tuple["Split", dict[str, int]]:
    """Event-time quantiles (µs) where valid and test begin: exact, so that the split does not
    depend on how the interactions are laid out in files and partitions; and the rows of each
    split (one sample per event), which the quantiles' ranks give without another pass."""
    us = interactions.select(F.unix_micros(F.col("ts")).alias("us"))
    n = us.count() if n is None else n
    (lo, before_valid), (hi, before_test) = exact_quantiles(us, "us", [valid_from, test_from], n)
    return Split(lo, hi), {"train": before_valid, "valid": before_test - before_valid, "test": n - before_test}


def exact_quantiles(df: DataFrame, col: str, probs: list[float], n: int, rel_err: float = 1e-4) -> list[tuple[int, int]]:
    """Per p: the k-th smallest value of an integer column for k = ceil(p·n) (at least 1), and
    the number of rows below that value.

    approxQuantile alone is not enough: its answer depends on the partitioning of its input
    (a table written as one file or as several gives other cut-offs). Its rank guarantee
    (within rel_err·n) gives brackets at p ± 2·rel_err that hold the exact value; one more
    pass counts the rows below each bracket and collects the few inside it, which scales
    like the approximation (about 4·rel_err·n values per quantile)."""
    if n <= 0:
        raise ValueError(f"{col}: no rows to take quantiles of")
    ks = [quantile_rank(p, n) for p in probs]
    edges = df.approxQuantile(col, [q for p in probs for q in (max(p - 2 * rel_err, 0.0), min(p + 2 * rel_err, 1.0))],
                              rel_err)
    brackets = [(int(edges[2 * i]), int(edges[2 * i + 1])) for i in range(len(probs))]
    c = F.col(col)
    inside = reduce(lambda a, b: a | b, [(c >= lo) & (c <= hi) for lo, hi in brackets])
    got = df.agg(*[F.count(F.when(c < lo, 1)).alias(f"b{i}") for i, (lo, _) in enumerate(brackets)],
                 *[F.count(F.when(c <= hi, 1)).alias(f"a{i}") for i, (_, hi) in enumerate(brackets)],
                 F.sort_array(F.collect_list(F.when(inside, c))).alias("inside")).collect()[0]
    below, values, everything = [got[f"b{i}"] for i in range(len(probs))], list(got["inside"]), None
    out = []
    for i, ((lo, hi), k) in enumerate(zip(brackets, ks)):
        mine = [v for v in values if lo <= v <= hi]
        if not below[i] < k <= got[f"a{i}"]:  # never, if approxQuantile keeps its promise
            log.warning("%s: the approximate bracket of quantile %s missed; taking it from all rows", col, probs[i])
            everything = everything or sorted(r[0] for r in df.select(col).collect())
            mine, below[i] = everything, 0
        value = int(mine[k - below[i] - 1])
        out.append((value, below[i] + bisect.bisect_left(mine, value)))  # the bracket's rows below it, and all below that
    return out


TIE_BREAK = ("user_id", ITEM_ID, "ts", "label")


def seeded_key(seed: int):
    """A seeded hash of the event (a sample row): the order the splits are written in."""
    return F.xxhash64(F.lit(seed), "user_id", ITEM_ID, F.unix_micros("ts"), "label")


ORDER = "_order"  # the seeded key's column while rows are placed; dropped before writing
SEEDED_ORDER = (ORDER, *TIE_BREAK)


def in_seeded_order(df: DataFrame, seed: int, files: int) -> DataFrame:
    """The rows spread over `files` partitions (one Parquet file each) by a seeded hash of
    the event and sorted by it within each: an order that mixes users and time, and a layout
    (which rows go to which file, and so to which row group and training process) that
    depends on the rows alone, not on how many partitions built them nor on the session that
    wrote them. (A global sort did not do that: its range bounds come from a sample whose
    seed follows the session's RDD count, so the files split the same order elsewhere, and
    Horovod's ranks, which shard by row group, trained on other batches.) An explicit count
    is a hash shuffle that adaptive execution leaves as it is."""
    return (df.withColumn(ORDER, seeded_key(seed)).repartition(files, ORDER)
            .sortWithinPartitions(*SEEDED_ORDER).drop(ORDER))


def row_group_bytes(rows: int, row_bytes: float, row_group_mb: int, min_row_groups: int) -> int:
    """Parquet row-group size: row_group_mb, smaller when the split would otherwise have
    fewer than min_row_groups groups (each training process reads whole row groups)."""
    whole = int(rows * row_bytes)
    return max(64 * 1024, min(row_group_mb * 2**20, whole // max(min_row_groups, 1)))


ROW_GROUPS_PER_FILE = 8


def file_count(rows: int, row_bytes: float, block: int) -> int:
    """Files of a split: about ROW_GROUPS_PER_FILE row groups of `block` bytes each (a
    partition that gets no row writes no file: a tiny split may have fewer)."""
    return max(1, -(-int(rows * row_bytes) // (block * ROW_GROUPS_PER_FILE)))


def grouping_partitions(events: int, events_per_task: int, cores: int) -> int:
    """Partitions of the per-user grouping: enough that each task holds about
    events_per_task events, never fewer than the cores. A fixed shuffle count (the
    cluster profile's 400) would make thousands of near-empty Python tasks for a small
    table, and its cached result is not coalesced by adaptive execution."""
    return max(cores, -(-events // max(events_per_task, 1)))


def item_counts(interactions: DataFrame, split: "Split") -> DataFrame:
    """Per item: its interactions in all splits (n_all) and in the train split (n_train), in
    one pass for the vocabulary and the cold flags."""
    return interactions.groupBy(ITEM_ID).agg(F.count(F.lit(1)).alias("n_all"),
                                             F.count(F.when(split.in_train, 1)).alias("n_train"))


def build_vocabulary(counts: DataFrame, partitions: int = 1) -> tuple[DataFrame, DataFrame]:
    """Contiguous indices FIRST_INDEX.. for items with a train interaction (counts: item_counts),
    the most frequent in the train split first (ties by item_id), so the first n indices are
    the n most frequent items (train.max_vocab keeps them); 0 is padding and 1
    out-of-vocabulary. Distributed and in the JVM: each partition of the sorted ids numbers
    its rows after those of the partitions before it (an RDD's zipWithIndex went through
    Python workers: three jobs, 5 s locally and 23 s on the 2-worker cluster at the demo's
    size). Returns the vocabulary and the persisted sort it reads (unpersist it once the
    vocabulary is written: a sort run again may cut its partitions elsewhere). An explicit
    number of partitions, which adaptive execution leaves as asked: the session's (the
    cluster profile's 400) made 400 Python tasks and Delta files of a few rows each."""
    order = [F.desc("n_train"), F.col(ITEM_ID)]
    ranked = (counts.filter(F.col("n_train") > 0).repartitionByRange(partitions, *order).sortWithinPartitions(*order)
              .select(ITEM_ID, F.spark_partition_id().alias("_p"), F.monotonically_increasing_id().alias("_m"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    sizes = sorted((r[0], r[1]) for r in ranked.groupBy("_p").count().collect())
    if not sizes:
        return ranked.sparkSession.createDataFrame([], ITEM_VOCAB), ranked
    starts = [FIRST_INDEX + sum(n for _, n in sizes[:i]) for i in range(len(sizes))]
    start = F.element_at(F.create_map(*[F.lit(v) for (p, _), s0 in zip(sizes, starts) for v in (p, s0)]), F.col("_p"))
    within = F.col("_m") - F.shiftleft(F.col("_p").cast("long"), 33)  # monotonically_increasing_id's layout
    return ranked.select(ITEM_ID, (start + within).cast("int").alias("idx")), ranked


def semantic_codes(sid: DataFrame, version: str) -> tuple[DataFrame, list[str]]:
    """The codes of one codebook version (semantic_ids may hold several side by side)."""
    spaces = [c[: -len("_codes")] for c in sid.columns if c.endswith("_codes")]
    rows = sid.filter(F.col("codebook_version") == version)
    return rows.select(ITEM_ID, *[f"{s}_codes" for s in spaces]), spaces


def no_codes_error(sid: DataFrame, version: str) -> StorageError | None:
    """The error for a semantic_ids table with no rows of `version` (None if it has some)."""
    if not sid.filter(F.col("codebook_version") == version).isEmpty():
        return None
    held = [r[0] for r in sid.select("codebook_version").distinct().limit(5).collect()]
    return StorageError(f"semantic_ids holds no rows of codebook {version} (it holds {held or 'none'}): "
                        f"run jobs/assign_ids.py codebooks.version={version}")


@dataclass(frozen=True)
class Sources:
    """What the samples are built from: the validated interactions, the codes of the
    codebook version in use and that codebook's shape, the source tables' versions."""
    interactions: DataFrame
    n_events: int
    codebook_version: str
    codes: DataFrame
    spaces: list[str]
    k: int
    layers: int
    versions: dict
    semantic_ids: DataFrame  # the whole table (its other versions name what it holds)
    tables: dict             # name -> path of the tables read (the manifest's source_tables)


@dataclass(frozen=True)
class Split:
    """Event-time cutoffs (µs) where valid and test begin."""
    valid_from: int
    test_from: int

    @property
    def in_train(self):
        return F.unix_micros("ts") < F.lit(self.valid_from)


@contextmanager
def step(spark: SparkSession, what: str):
    """Logs how long a step of the build took (progress on a long build, and where it went),
    and names the step's Spark jobs in the UI and the event log."""
    sc, t = spark.sparkContext, time.perf_counter()
    sc.setJobDescription(f"build_samples: {what}")
    try:
        yield
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]  # None clears it
    log.info("samples: %s in %.1fs", what, time.perf_counter() - t)


def build_samples(job: JobContext) -> SamplesManifest:
    """The steps, in order: sources, split, vocabulary, events, histories, write, content
    features, manifest."""
    cfg, spark = job.cfg, job.session
    engine = job.engine
    with step(spark, "sources read and checked"):
        src = read_sources(job)
        require_codes(src)
    with step(spark, "split cut-offs"):
        split, rows = split_cutoffs(src.interactions, cfg.samples.valid_from, cfg.samples.test_from, src.n_events)
    counts = item_counts(src.interactions, split).persist(StorageLevel.MEMORY_AND_DISK)  # #items rows
    with step(spark, "vocabulary written"):
        vocab, vocab_size = write_vocabulary(engine, cfg, src, counts)
    vocab_path = cfg.table_path("item_vocab")
    cat = None
    if cfg.samples.content.dim > 0:
        from psrq.samples.content_spark import catalogue_index

        with step(spark, "catalogue indexed"):
            cat = catalogue_index(engine.read(cfg.table_path("items"))).persist(StorageLevel.MEMORY_AND_DISK)
    events = sample_events(cfg, src, counts, vocab, cat)
    # the three writes, at once, share this cache: building it first with a count of each
    # split made the stage slower (26.7-29.9 s against 24.3-24.8 s, benchmarks/README.md)
    samples = histories(spark, cfg, src, split, events).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with step(spark, "histories built and splits written"):
            splits = write_splits(spark, cfg, src, samples, rows)
    finally:
        samples.unpersist()
        counts.unpersist()
    info: dict = {
        "codebook_version": src.codebook_version, "k": src.k, "layers": src.layers, "spaces": src.spaces,
        "history_len": cfg.samples.history_len, "vocab_size": vocab_size, "vocab_table": vocab_path,
        "vocab_version": engine.version(vocab_path), "code_shift": 1, "padding": 0, "oov_index": OOV,
        "vocab_order": VOCAB_ORDER, "split_from_us": {"valid": split.valid_from, "test": split.test_from},
        "cold": {"threshold": cfg.samples.cold_threshold, "scope": cfg.samples.cold_scope},
        "source_versions": src.versions, "source_tables": src.tables, "settings": build_settings(cfg),
        "splits": splits,
    }
    base = cfg.samples_root()
    if cat is not None:
        from psrq.samples.content_spark import build_content

        with step(spark, "content features written"):
            feats, info["content"] = build_content(cfg, engine.read(cfg.table_path("items")), cat,
                                                   src.interactions.filter(split.in_train), qarm_codes(cfg))
            cat.unpersist()
            write_content(fs.join(base, CONTENT_FILE), feats)
        info["content"]["file"] = CONTENT_FILE
    fs.write_text(fs.join(base, SamplesManifest.FILE), json.dumps(info, indent=2))  # last: the samples are complete
    log.info("samples: %s", {s: o["rows"] for s, o in splits.items()})
    return SamplesManifest.of(base, info)


def read_sources(job: JobContext) -> Sources:
    engine, cfg = job.engine, job.cfg
    inter_path, sid_path = cfg.table_path("interactions"), cfg.table_path("semantic_ids")
    versions = {"interactions": engine.version(inter_path), "semantic_ids": engine.version(sid_path)}
    interactions, n_events = check_interactions(engine.read(inter_path), window=cfg.validation.window())
    cb_version = version_in_use(engine, cfg)
    sid = engine.read(sid_path)
    codes, spaces = semantic_codes(sid, cb_version)
    manifest = job.codebooks.manifest(cb_version)
    layers = 1 if manifest["method"] == "vq" else manifest["spec"]["layers"]
    return Sources(interactions, n_events, cb_version, codes, spaces, manifest["spec"]["k"], layers, versions, sid,
                   {"interactions": inter_path, "semantic_ids": sid_path})


def write_vocabulary(engine, cfg: Config, src: Sources, counts: DataFrame) -> tuple[DataFrame, int]:
    """The item vocabulary of the train split, written to Delta (keyed by the samples'
    settings, the codebook and the interactions' version), read back from the table; and its
    size with padding and OOV."""
    # the vocabulary has at most as many rows as the events: partitions as the history step's
    parts = grouping_partitions(src.n_events, cfg.samples.events_per_task, 1)
    vocab, ranked = build_vocabulary(counts, parts)
    vocab_path = cfg.table_path("item_vocab")
    txn = AppTxn(f"psrq.build_samples.{cfg.fingerprint('samples')}.{src.codebook_version}.{src.versions['interactions']}",
                 cfg.run.run_id)
    try:
        res = engine.write(vocab, vocab_path, "overwrite", txn,
                           description=f"item vocabulary for samples ({src.codebook_version})")
    finally:
        ranked.unpersist()
    vocab = engine.read(vocab_path)
    return vocab, (vocab.count() if res.skipped or not res.rows_written else res.rows_written) + FIRST_INDEX


def sample_events(cfg: Config, src: Sources, counts: DataFrame, vocab: DataFrame, cat: DataFrame | None) -> DataFrame:
    """Every event with its item's codes, vocabulary index, cold flag (from counts:
    item_counts) and catalogue index; every item has codes (require_codes)."""
    sc = cfg.samples
    counts = counts.select(ITEM_ID, F.col("n_all" if sc.cold_scope == "all" else "n_train").alias("_n"))
    events = src.interactions.join(src.codes, ITEM_ID, "left").join(vocab, ITEM_ID, "left").join(counts, ITEM_ID, "left")
    extra = []
    if cat is not None:
        events = events.join(cat, ITEM_ID, "left")
        extra = [F.coalesce("content_idx", F.lit(0)).alias("content_idx")]
    events = events.select("user_id", ITEM_ID, "label", "ts", F.coalesce("idx", F.lit(OOV)).alias("item_idx"),
                           (F.coalesce("_n", F.lit(0)) < sc.cold_threshold).cast("int").alias("is_cold"),
                           *[f"{s}_codes" for s in src.spaces], *extra)
    return events


def require_codes(src: Sources) -> None:
    """Every event's item has codes of the codebook in use, checked before anything is
    written (one anti-join of the interactions with the codes; when some are missing, a
    table without that codebook at all is named as such)."""
    missing = src.interactions.select(ITEM_ID).join(src.codes.select(ITEM_ID), ITEM_ID, "left_anti")
    r = missing.agg(F.count(F.lit(1)).alias("n"), F.slice(F.sort_array(F.collect_set(ITEM_ID)), 1, 5).alias("ex")).collect()[0]
    if r["n"]:
        if (err := no_codes_error(src.semantic_ids, src.codebook_version)) is not None:
            raise err
        raise InputValidationError("interactions", [Problem(ITEM_ID, f"point at items without semantic IDs of codebook "
                                                             f"{src.codebook_version} (run jobs/reindex_catalog.py or "
                                                             "assign_ids.py); nothing was written", r["n"], r["ex"])])


def histories(spark: SparkSession, cfg: Config, src: Sources, split: Split, events: DataFrame) -> DataFrame:
    """Every event with its user's last N earlier positives and its split: the events
    hash-partitioned by user, sorted by user and time within each partition, and streamed
    through psrq.samples.layout.stream_samples on the executors. A Python worker holds one
    Arrow batch (spark.arrow_batch_rows) and N context rows at a time, however many events a
    user has (Spark's sort spills to disk); no user's events are gathered in one place."""
    sc = cfg.samples
    schema = samples_schema(src.spaces, "content_idx" in events.columns)
    arrow_schema = to_arrow_schema(schema, timestamp_utc=True)
    samples = partial(sorted_samples, spaces=src.spaces, layers=src.layers, n=sc.history_len,
                      valid_from=split.valid_from, test_from=split.test_from, codebook_version=src.codebook_version)

    def task(batches):
        for t in stream_samples(batches, samples, sc.history_len):
            yield from t.select(schema.fieldNames()).cast(arrow_schema).to_batches()

    parts = grouping_partitions(src.n_events, sc.events_per_task, spark.sparkContext.defaultParallelism)
    return events.repartition(parts, "user_id").sortWithinPartitions(*HISTORY_ORDER).mapInArrow(task, schema)


def write_splits(spark: SparkSession, cfg: Config, src: Sources, samples: DataFrame, rows: dict[str, int]) -> dict:
    """Each split as Parquet in a seeded random order, row groups sized by bytes (from the
    layout), files by their number of row groups; the three writes run at once."""
    sc = cfg.samples
    columns = samples.drop("split")
    width = row_bytes(to_arrow_schema(columns.schema, timestamp_utc=True), sc.history_len, src.layers,
                      src.codebook_version)
    out = {}
    for split in SPLITS:
        block = row_group_bytes(rows[split], width, sc.row_group_mb, sc.min_row_groups)
        # relative to the manifest's folder: a copied or moved samples folder reads its own files
        out[split] = {"path": split, "rows": rows[split], "row_group_bytes": block,
                      "files": file_count(rows[split], width, block)}
    with side_jobs(spark, "psrq-samples-write") as submit:
        writes = [submit(_write_split, samples, split, fs.join(cfg.samples_root(), split), out[split], sc.order_seed)
                  for split in SPLITS]
        for w in writes:
            w.result()
    return out


def _write_split(samples: DataFrame, split: str, path: str, layout: dict, seed: int) -> None:
    (in_seeded_order(samples.filter(F.col("split") == split).drop("split"), seed, layout["files"])
     .write.mode("overwrite").option("parquet.block.size", layout["row_group_bytes"])
     .option("maxRecordsPerFile", 0)  # one file per partition, whatever spark.sql.files.maxRecordsPerFile says
     .parquet(fs.spark_uri(path)))
