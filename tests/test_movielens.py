"""MovieLens-100k importer (on a hand-made folder in the same format) and the embed_text
job with the packaged all-MiniLM-L6-v2 model."""
from datetime import datetime, timezone

import numpy as np
import pytest

from psrq.data.movielens import read_interactions, read_items
from psrq.errors import InputValidationError
from psrq.job import JobContext

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def flags(*names):
    return "|".join("1" if g in names else "0" for g in GENRES)


@pytest.fixture
def ml_dir(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    toy = flags("Animation", "Children's", "Comedy")
    (d / "u.item").write_bytes((
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{toy}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags('Action', 'Adventure', 'Thriller')}\n"
        f"3|Café Society (1995)|01-Jan-1995||http://x|{flags('unknown')}\n").encode("latin-1"))
    (d / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t3\t4\t881250951\n2\t1\t1\t881250952\n")
    return d


def test_items_and_interactions(ml_dir):
    items = read_items(ml_dir)
    assert items.item_id.tolist() == [1, 2, 3]
    assert items.text[0] == "Toy Story (1995) | Animation, Children's, Comedy"
    assert items.title[2] == "Café Society (1995)"  # latin-1 read as such
    emb = np.stack(items.genre_emb)
    assert emb.shape == (3, 19) and np.allclose(np.linalg.norm(emb, axis=1), 1)
    assert emb[1, GENRES.index("Action")] > 0 and emb[1, GENRES.index("Comedy")] == 0
    inter = read_interactions(ml_dir)
    assert inter.label.tolist() == [1, 0, 1, 0]  # rating >= 4
    assert inter.ts[0] == datetime.fromtimestamp(881250949, tz=timezone.utc)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(InputValidationError, match="missing u.data, u.item, u.genre"):
        read_items(tmp_path)


def test_import_and_embed_text(spark, ml_dir, tmp_path):
    """The import job writes contract-valid tables; embed_text adds normalised MiniLM
    vectors in which related titles are closer than unrelated ones."""
    from psrq.config import load_config
    from psrq.data.embed_text import embed_text_stage
    from psrq.data.import_movielens import import_movielens
    from psrq.data.validate import validate_inputs
    from psrq.storage import open_engine

    cfg = load_config("local", "movielens_100k", [f"storage.root={tmp_path}/delta", f"movielens.path={ml_dir}"])
    import_movielens(JobContext.of(spark, cfg))
    res = embed_text_stage(JobContext.of(spark, cfg))
    assert res.dim == 384 and res.rows == 3 and res.committed
    items = open_engine(spark, "delta-rs").read(cfg.table_path("items")).toPandas().set_index("item_id")
    emb = np.stack(items.text_emb.map(np.asarray))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    validate_inputs(JobContext.of(spark, cfg))  # both modalities meet the items contract
    before = open_engine(spark, "delta-rs").version(cfg.table_path("items"))
    again = embed_text_stage(JobContext.of(spark, cfg))  # same run again: nothing new committed
    assert open_engine(spark, "delta-rs").version(cfg.table_path("items")) == before == again.version
    assert not again.committed
    from psrq.data.embed_text import embed

    v = embed(["a cartoon comedy for children", "Toy Story | Animation, Children's, Comedy", "a spy thriller"],
              res.model, 8)
    assert v[0] @ v[1] > v[2] @ v[1]
