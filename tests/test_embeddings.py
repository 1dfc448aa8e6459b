import numpy as np
import pyarrow as pa
import pytest

from psrq.data.embeddings import embedding_problems, embeddings_to_numpy


def test_list_column_to_matrix_and_mask():
    arr = pa.array([[1.0, 2.0], [3.0, 4.0, 5.0], None, [6.0, 7.0]], type=pa.list_(pa.float32()))
    m, ok = embeddings_to_numpy(arr, 2)
    assert ok.tolist() == [True, False, False, True]
    assert m.tolist() == [[1, 2], [0, 0], [0, 0], [6, 7]]


def test_sliced_and_chunked_columns_keep_their_rows():
    arr = pa.array([[float(i), float(i) + 0.5] for i in range(10)], type=pa.list_(pa.float32()))
    m, ok = embeddings_to_numpy(arr.slice(3, 4), 2)
    assert ok.all() and m[:, 0].tolist() == [3, 4, 5, 6]
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(5, 2)])
    m, _ = embeddings_to_numpy(chunked, 2)
    assert m[:, 0].tolist() == [0, 1, 5, 6]


def test_binary_float32_column():
    rows = np.arange(6, dtype="<f4").reshape(3, 2)
    arr = pa.array([rows[0].tobytes(), b"\x00" * 4, rows[2].tobytes()], type=pa.binary())
    m, ok = embeddings_to_numpy(arr, 2)
    assert ok.tolist() == [True, False, True] and m[2].tolist() == [4, 5]


def test_other_types_are_refused():
    with pytest.raises(TypeError, match="array<float> or binary"):
        embeddings_to_numpy(pa.array(["a"]), 2)


def test_problem_report_counts_each_kind_with_examples():
    vals = [[1.0, 1.0], [float("nan"), 1.0], [0.0, 0.0], [1.0], None, [float("inf"), 0.0]]
    rep = embedding_problems(np.arange(10, 16), pa.array(vals, type=pa.list_(pa.float32())), 2)
    assert rep.counts == {"non_finite": 2, "all_zero": 1, "wrong_dim": 1, "null": 1}
    assert rep.examples["non_finite"] == [11, 15] and rep.examples["null"] == [14]
