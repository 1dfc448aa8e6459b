"""HetRec 2011 Last.fm-2k importer, on a hand-made folder in the files' own formats: first
taggings as positives, sampled negatives, tag profiles from before the valid split only."""
import numpy as np
import pandas as pd
import pytest

from psrq.data.lastfm import read_lastfm, sample_negatives
from psrq.errors import ConfigError, InputValidationError
from psrq.job import JobContext

ARTISTS = {1: "Alpha", 2: 'Lee "Scratch" Beta', 3: "Gamma", 4: "NA", 5: "Epsilon", 6: "Zeta"}
TAGS = {1: "rock", 2: "jazz", 3: "late", 4: "pop"}
TAGGINGS = [  # user, artist, tag, day, month, year
    (10, 1, 1, 1, 1, 2008), (10, 1, 4, 1, 3, 2008),  # tagged twice: the first date is the event
    (11, 1, 1, 1, 2, 2008), (11, 2, 2, 1, 4, 2008), (12, 2, 2, 1, 5, 2008), (12, 3, 1, 1, 6, 2008),
    (10, 5, 3, 1, 1, 2009), (11, 6, 3, 1, 2, 2009),  # "late": used in the valid split only
    (12, 1, 2, 1, 1, 1956),   # a junk year: dropped, but user 12 did tag artist 1
    (12, 99, 1, 1, 7, 2008),  # an artist missing from artists.dat: dropped
]
LISTENED = [(10, 2, 300), (11, 3, 20), (12, 5, 7), (12, 4, 1)]
# allowed negatives (tagged artists none of theirs): user 10 {3, 6}, user 11 {5}, user 12 {6}
ALLOWED = {10: {3, 6}, 11: {5}, 12: {6}}


@pytest.fixture
def fm_dir(tmp_path):
    d = tmp_path / "hetrec2011-lastfm-2k"
    d.mkdir()
    (d / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(
        f"{i}\t{n}\thttp://www.last.fm/music/{i}\thttp://userserve-ak.last.fm/{i}.jpg\n" for i, n in ARTISTS.items()),
        encoding="utf-8")
    (d / "tags.dat").write_text("tagID\ttagValue\n" + "".join(f"{i}\t{v}\n" for i, v in TAGS.items()),
                                encoding="utf-8-sig")  # with a BOM, as the release has it
    (d / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\tday\tmonth\tyear\n" + "".join(
        "\t".join(map(str, r)) + "\n" for r in TAGGINGS))
    (d / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "".join(
        "\t".join(map(str, r)) + "\n" for r in LISTENED))
    return d


def test_events_are_first_taggings_with_negatives_the_user_never_met(fm_dir):
    data = read_lastfm(fm_dir, valid_from=0.8, tag_dim=2)
    inter = data.interactions
    assert list(inter.columns) == ["user_id", "item_id", "label", "ts"] and str(inter.ts.dt.tz) == "UTC"
    pos = inter[inter.label == 1]
    assert sorted(zip(pos.user_id, pos.item_id)) == [(10, 1), (10, 5), (11, 1), (11, 2), (11, 6), (12, 2), (12, 3)]
    assert pos.set_index(["user_id", "item_id"]).ts[(10, 1)] == pd.Timestamp("2008-01-01", tz="UTC")
    neg = inter[inter.label == 0]
    assert len(neg) == len(pos) == 7
    assert all(i in ALLOWED[u] for u, i in zip(neg.user_id, neg.item_id))  # never tagged (1956 too) or listened
    assert sorted(zip(neg.user_id, neg.ts)) == sorted(zip(pos.user_id, pos.ts))  # each at its positive's time
    f = data.figures
    assert (f.dropped_dates, f.dropped_unknown_artists, f.taggings, f.positives, f.negatives) == (1, 1, 8, 7, 7)
    assert (f.users, f.items_in_events) == (3, 5)


def test_tag_profiles_use_the_taggings_before_the_valid_split_only(fm_dir):
    data = read_lastfm(fm_dir, valid_from=0.8, tag_dim=2)
    # 7 positives: the valid split starts at the ceil(0.8 * 7) = 6th time, 2009-01-01
    assert data.figures.tags_before == "2009-01-01T00:00:00+00:00" and data.figures.items_with_tags == 3
    items = data.items.set_index("item_id")
    assert items.index.tolist() == [1, 2, 3, 4, 5, 6]  # the whole catalogue
    assert items.text[1] == "Alpha | rock, pop" and items.text[2] == 'Lee "Scratch" Beta | jazz'
    assert items.name[4] == "NA" and items.text[4] == "NA"  # a name, not a missing value; never tagged
    assert not items.text.str.contains("late").any()  # a tag of valid events only
    emb = np.stack(items.tag_emb)
    assert emb.shape == (6, 3) and emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1)
    # the 2 most used tags before the split: rock (3), jazz (2); pop (1) is left out
    assert np.allclose(emb[0], [1, 0, 0]) and np.allclose(emb[1], [0, 1, 0])
    assert (emb[3:, 2] == 1).all() and (emb[:3, 2] == 0).all()  # untagged, or tagged late: the "no tag" unit
    later = read_lastfm(fm_dir, valid_from=0.9, tag_dim=2).items.set_index("item_id")
    assert later.text[5] == "Epsilon | late"  # the split moved past 2009-01: that tagging counts now


def test_negatives_are_seeded(fm_dir):
    a, b = read_lastfm(fm_dir, seed=3).interactions, read_lastfm(fm_dir, seed=3).interactions
    pd.testing.assert_frame_equal(a, b)
    rng = np.random.default_rng(0)
    pos = pd.DataFrame({"user_id": rng.integers(0, 50, 400), "ts": pd.Timestamp("2009-01-01", tz="UTC")})
    seen = pd.DataFrame({"user_id": rng.integers(0, 50, 2000), "item_id": rng.integers(0, 300, 2000)})
    pool = np.arange(1, 300)
    x, y = (sample_negatives(pos, seen, pool, 2, s) for s in (1, 2))
    assert len(x) == 800 and not x.equals(y)
    pd.testing.assert_frame_equal(x, sample_negatives(pos, seen, pool, 2, 1))
    met = set(zip(seen.user_id, seen.item_id))
    assert not any((u, i) in met for u, i in zip(x.user_id, x.item_id)) and x.item_id.isin(pool).all()


def test_the_timestamps_file_is_preferred(fm_dir):
    rows = [(u, a, t, int(pd.Timestamp(year=y, month=m, day=d, tz="UTC").timestamp() * 1000))
            for u, a, t, d, m, y in TAGGINGS]
    rows[0] = (10, 1, 1, 1199232000000)  # 2008-01-02 00:00 UTC
    (fm_dir / "user_taggedartists-timestamps.dat").write_text("userID\tartistID\ttagID\ttimestamp\n" + "".join(
        "\t".join(map(str, r)) + "\n" for r in rows))
    (fm_dir / "user_taggedartists.dat").unlink()
    inter = read_lastfm(fm_dir).interactions
    first = inter[(inter.user_id == 10) & (inter.item_id == 1)].ts.iloc[0]
    assert first == pd.Timestamp("2008-01-02", tz="UTC")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(InputValidationError, match="missing user_taggedartists.dat, user_artists.dat, artists.dat, "
                                                   "tags.dat .*lastfm.path") as err:
        read_lastfm(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_the_tag_modality_must_have_the_vectors_width():
    from psrq.config import load_config
    from psrq.data.import_lastfm import check_tag_width

    check_tag_width(load_config("local", "lastfm_2k"))
    with pytest.raises(ConfigError, match="dataset.modalities.tag.dim=33, but lastfm.tag_dim=8"):
        check_tag_width(load_config("local", "lastfm_2k", ["lastfm.tag_dim=8"]))


def test_import_writes_tables_that_meet_the_contracts(spark, fm_dir, tmp_path):
    from psrq.config import load_config
    from psrq.data.import_lastfm import import_lastfm
    from psrq.data.validation import validate_interactions, validate_items

    cfg = load_config("local", "lastfm_2k", [f"storage.root={tmp_path}/delta", f"lastfm.path={fm_dir}",
                                             "storage.engine=delta-rs", "lastfm.tag_dim=2",
                                             "dataset.modalities.tag.dim=3"])
    job = JobContext.of(spark, cfg)
    res = import_lastfm(job)
    assert (res.items.rows, res.interactions.rows, res.positive_rate) == (6, 14, 0.5)
    assert res.figures.positives == 7 and res.as_dict()["figures"]["dropped_dates"] == 1
    items = job.engine.read(cfg.table_path("items"))
    assert items.columns == ["item_id", "name", "text", "tag_emb", "updated_at"]
    validate_items(items, {"tag_emb": 3})  # text_emb comes from jobs/embed_text.py
    inter = validate_interactions(job.engine.read(cfg.table_path("interactions")), items,
                                  window=cfg.validation.window())
    got = inter.toPandas().sort_values(["ts", "user_id", "label", "item_id"], ascending=[True, True, False, True])
    want = read_lastfm(fm_dir, tag_dim=2).interactions
    assert got[["user_id", "item_id", "label"]].values.tolist() == want[["user_id", "item_id", "label"]].values.tolist()


def test_no_usable_tagging_is_an_error(fm_dir):
    (fm_dir / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\tday\tmonth\tyear\n10\t1\t1\t1\t1\t1956\n")
    with pytest.raises(InputValidationError, match="no tagging of an artist of artists.dat dated from 2002-01-01"):
        read_lastfm(fm_dir)
