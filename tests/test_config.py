import pytest

from psrq.config import load_config
from psrq.errors import ConfigError


def test_defaults_load_and_layers_merge():
    cfg = load_config("local", "synthetic_small")
    assert cfg.spark.master is None  # profiles carry no master: spark-submit's, else local[*]
    assert cfg.dataset.modalities["text"].column == "text_emb"
    assert cfg.dataset.modalities["audio"].dim == 768
    assert cfg.synthetic.n_items == 3000  # from the dataset layer, over the model default


def test_cluster_profile_leaves_master_to_spark_submit(monkeypatch):
    monkeypatch.setenv("PSRQ_STORAGE_ROOT", "s3a://bucket/psrq")
    cfg = load_config("cluster", "synthetic_1m")
    assert cfg.spark.master is None
    assert cfg.storage.engine == "delta-spark"
    assert cfg.spark.jvm_packages == ["delta", "s3a"]
    assert cfg.table_path("items") == "s3a://bucket/psrq/items"


def test_overrides_win_and_are_typed():
    cfg = load_config("local", "synthetic_small", ["synthetic.n_items=123", "spark.conf.spark.foo=bar", "run.run_id=4"])
    assert cfg.synthetic.n_items == 123
    assert cfg.run.run_id == 4
    # merged with the profile's own Spark settings, not replacing them
    assert cfg.spark.conf == {"spark.databricks.delta.snapshotPartitions": "2", "spark.foo": "bar"}


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"synthetic\.n_items: .*greater than or equal to 1.*-5"):
        load_config("local", "synthetic_small", ["synthetic.n_items=-5"])
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions: .*integer.*'many'"):
        load_config("local", "synthetic_small", ["spark.shuffle_partitions=many"])


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"synthetic\.n_itemz: Extra inputs are not permitted"):
        load_config("local", "synthetic_small", ["synthetic.n_itemz=10"])


def test_bad_enum_and_malformed_override():
    with pytest.raises(ConfigError, match=r"storage\.engine"):
        load_config("local", "synthetic_small", ["storage.engine=parquet"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("local", "synthetic_small", ["synthetic.n_items"])


def test_models_are_the_registered_ones():
    with pytest.raises(ConfigError, match=r"train\.model: .*unknown model 'mca' \(choose from mcca, din, "):
        load_config("local", "synthetic_small", ["train.model=mca"])
    with pytest.raises(ConfigError, match=r"tuning\.models\.1: .*unknown model 'vbpr2'"):
        load_config("local", "synthetic_small", ["tuning.models=[din,vbpr2]"])
    assert load_config("local", "synthetic_small", ["train.model=simtier_make"]).train.model == "simtier_make"


def test_missing_layer_lists_what_exists():
    with pytest.raises(ConfigError, match=r"profile 'laptop' not found .*\(available: cluster, local\)$"):
        load_config("laptop", "synthetic_small")
    with pytest.raises(ConfigError, match=r"dataset 'nope' not found .*synthetic_small"):
        load_config("local", "nope")


def test_fingerprint_follows_settings():
    a = load_config("local", "synthetic_small")
    b = load_config("local", "synthetic_small", ["synthetic.seed=8"])
    assert a.fingerprint("synthetic") == load_config("local", "synthetic_small").fingerprint("synthetic")
    assert a.fingerprint("synthetic") != b.fingerprint("synthetic")


def test_unknown_table_name():
    with pytest.raises(ConfigError, match="storage.tables.nope"):
        load_config("local", "synthetic_small").table_path("nope")


def test_job_options_go_anywhere_on_the_line():
    """--json (or --dataset) after the key=value overrides is taken, as before them."""
    from psrq.cli import parse_args

    a = parse_args("a job", ["storage.root=/x", "--json", "run.run_id=3", "--dataset", "movielens_100k"])
    assert a.json and a.dataset == "movielens_100k" and a.overrides == ["storage.root=/x", "run.run_id=3"]


def test_skew_shares_must_leave_room_for_the_other_users():
    with pytest.raises(ConfigError, match="heavy_users"):
        load_config("local", "synthetic_small", ["synthetic.heavy_users=[0.6,0.5]"])


def test_show_config_prints_the_merged_settings_the_job_reads(capsys):
    import yaml

    from conftest import load_job

    assert load_job("assign_ids").main(["--show-config", "--dataset", "catalogue", "storage.root=/data/x",
                                        "codebooks.k=64"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert set(shown) == {"run", "spark", "storage", "dataset", "codebooks", "validation"}
    assert shown["storage"]["root"] == "/data/x" and shown["codebooks"]["k"] == 64
    assert shown["dataset"]["name"] == "catalogue"


def test_a_dataset_file_anywhere_and_locations_under_the_root(tmp_path):
    mine = tmp_path / "somewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("dataset: {name: mine, kind: external, modalities: {text: {column: t, dim: 8}}}\n")
    cfg = load_config("local", str(mine), ["storage.root=/data/mine"])
    assert cfg.dataset.name == "mine" and cfg.dataset.modalities["text"].dim == 8
    assert (cfg.codebooks_root(), cfg.samples_root(), cfg.checkpoint_root(), cfg.table_path("items")) == (
        "/data/mine/codebooks", "/data/mine/samples", "/data/mine/checkpoints", "/data/mine/items")
    assert load_config("local", str(mine), ["storage.root=s3://b/p", "samples.path=/abs"]).samples_root() == "/abs"
    assert load_config("local", str(mine), ["storage.root=s3://b/p"]).codebooks_root() == "s3://b/p/codebooks"
    with pytest.raises(ConfigError, match="must stay under storage.root"):
        load_config("local", str(mine), ["samples.path=../elsewhere"])
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config("local", str(tmp_path / "missing.yaml"))
