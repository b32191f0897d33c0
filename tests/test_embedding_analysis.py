"""Tests of dq_plugins.analysis.embeddings and dq_plugins.figures.embedding_map on planted data."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from dq_plugins.analysis.embeddings import EMBEDDING_COLUMNS, EmbeddingAnalysis, EmbeddingSummary, analyze_embeddings
from dq_plugins.figures.embedding_map import MAX_POINTS, embedding_map, embedding_map_html, subsample
from dq_plugins.schema import LABEL_FREE_EMBEDDING_COLUMNS, MULTILABEL_EMBEDDING_COLUMNS

pytestmark = pytest.mark.filterwarnings("error")


def _planted(n: int = 600, c: int = 4, d: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Blobs per class with 12 flipped labels, 2 exact copies (one with another label), 3 outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 2  # within a class cosine ~0.8: no natural near-duplicate
    true = rng.integers(0, c, n)
    x = centres[true] + rng.normal(size=(n, d))
    labels = true.copy()
    flipped = rng.choice(np.arange(20, n), 12, replace=False)
    labels[flipped] = (labels[flipped] + 1) % c
    x[5], labels[5] = x[4], labels[4]  # same label
    x[7], labels[7] = x[6], (labels[6] + 1) % c  # conflicting label
    outliers = np.array([10, 11, 12])
    x[outliers] = rng.normal(size=(3, d)) * 8
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), true] = 1.0 - 0.05 * (c - 1)
    return {
        "x": x.astype(np.float16), "ids": np.arange(n) * 3 + 100, "labels": labels, "true": true,
        "flipped": flipped, "outliers": outliers, "probs": probs,
    }


@pytest.fixture(scope="module")
def planted() -> dict[str, np.ndarray]:
    return _planted()


@pytest.fixture(scope="module")
def result(planted: dict[str, np.ndarray]) -> EmbeddingAnalysis:
    return analyze_embeddings(
        planted["x"], planted["ids"], planted["labels"], pred_probs=planted["probs"], projection="pca", n_clusters=4
    )


def test_columns_alignment_and_types(planted: dict[str, np.ndarray], result: EmbeddingAnalysis) -> None:
    samples, summary = result
    assert list(samples.columns) == ["sample_id", *EMBEDDING_COLUMNS]
    assert isinstance(samples.index, pd.RangeIndex) and len(samples) == 600
    np.testing.assert_array_equal(samples["sample_id"], planted["ids"])
    dtypes = samples.dtypes.astype(str).to_dict()
    assert dtypes == {
        "sample_id": "int64", "outlier_score": "float64", "is_outlier": "bool", "near_duplicate_of": "int64",
        "is_near_duplicate": "bool", "near_duplicate_score": "float64", "conflicting_duplicate": "bool",
        "conflicting_duplicate_score": "float64", "neighbor_disagreement": "float64", "cluster": "int64",
        "x2d": "float32", "y2d": "float32",
    }
    assert samples["outlier_score"].between(0, 1).all() and samples["neighbor_disagreement"].between(0, 1).all()
    assert isinstance(summary, EmbeddingSummary) and summary.k == 10
    assert summary.knn_method == "exact" and summary.projection_method == "pca"
    assert set(summary.timings) == {"normalise", "knn", "scores", "clusters", "projection", "tables"}


def test_planted_issues_are_found(planted: dict[str, np.ndarray], result: EmbeddingAnalysis) -> None:
    samples, summary = result
    ids = planted["ids"]
    dup = samples.set_index("sample_id")["near_duplicate_of"]
    assert dup[ids[4]] == ids[5] and dup[ids[5]] == ids[4] and dup[ids[6]] == ids[7]
    assert summary.num_near_duplicates == 4
    assert set(samples.index[samples["conflicting_duplicate"]]) == {6, 7}
    assert summary.num_conflicting_duplicates == 2
    top = samples["outlier_score"].nlargest(3).index
    assert set(top) == set(planted["outliers"].tolist())
    assert samples.loc[planted["outliers"], "is_outlier"].all()
    disagreement = samples["neighbor_disagreement"]
    assert disagreement[planted["flipped"]].min() > 0.8
    clean = np.setdiff1d(np.arange(600), np.concatenate([planted["flipped"], planted["outliers"], [7]]))
    assert disagreement[clean].max() < 0.5
    assert summary.num_clusters == 4
    assert summary.clusters["size"].sum() == 600
    assert summary.class_overlap["boundary_samples"].sum() >= 10


def test_metrics_names(result: EmbeddingAnalysis) -> None:
    metrics = result.summary.metrics("validation")
    assert set(metrics) == {
        "dq.num_near_duplicates.validation", "dq.num_conflicting_duplicates.validation",
        "dq.num_outliers.validation", "dq.num_clusters.validation", "dq.embedding_analysis_seconds.validation",
        "dq.knn_ranks.validation",
    }
    assert result.summary.metrics()["dq.num_near_duplicates"] == 4.0
    assert result.summary.metrics()["dq.knn_ranks"] == 1.0  # searched here, by this process alone


def test_a_graph_searched_beforehand_gives_the_same_analysis(
    planted: dict[str, np.ndarray], result: EmbeddingAnalysis
) -> None:
    from dq_plugins.analysis.embeddings import knn_settings
    from dq_plugins.scores.neighbors import KnnGraph, knn_cosine

    k, method = knn_settings(600)
    assert (k, method) == (10, "exact") == (result.summary.k, result.summary.knn_method)
    graph = KnnGraph(*knn_cosine(planted["x"], k, method=method), method=method, ranks=2, seconds=12.5)
    given = analyze_embeddings(planted["x"], planted["ids"], planted["labels"], pred_probs=planted["probs"],
                               projection="pca", n_clusters=4, neighbors=graph)
    pd.testing.assert_frame_equal(given.samples, result.samples)
    assert given.summary.knn_ranks == 2 and given.summary.timings["knn"] == 12.5
    assert given.summary.metrics()["dq.knn_ranks"] == 2.0
    wrong = graph._replace(indices=graph.indices[:, :5], similarities=graph.similarities[:, :5])
    with pytest.raises(ValueError, match=r"`neighbors` to be a 'exact' graph of shape \(600, 10\) but got a 'exact'"
                                         r" graph of shape \(600, 5\)\. HINT"):
        analyze_embeddings(planted["x"], planted["ids"], planted["labels"], neighbors=wrong)
    with pytest.raises(ValueError, match="'exact' graph of shape .* but got a 'ivf' graph"):
        analyze_embeddings(planted["x"], planted["ids"], planted["labels"], neighbors=graph._replace(method="ivf"))


def test_without_labels_the_label_free_columns_match_the_labelled_run(planted, result) -> None:
    free = analyze_embeddings(planted["x"], planted["ids"], projection="pca", n_clusters=4)
    assert list(free.samples.columns) == ["sample_id", *LABEL_FREE_EMBEDDING_COLUMNS]
    pd.testing.assert_frame_equal(free.samples, result.samples[free.samples.columns])  # same graph, same scores
    assert free.summary.num_conflicting_duplicates is None and free.summary.class_overlap.empty
    assert "dq.num_conflicting_duplicates" not in free.summary.metrics()
    assert free.summary.clusters["majority_label"].eq(-1).all() and free.summary.clusters["purity"].isna().all()

    sets = np.eye(4, dtype=np.int8)[planted["labels"]]
    multi = analyze_embeddings(planted["x"], planted["ids"], label_sets=sets, projection="pca", n_clusters=4)
    assert list(multi.samples.columns) == ["sample_id", *MULTILABEL_EMBEDDING_COLUMNS]
    np.testing.assert_allclose(multi.samples["neighbor_disagreement"], result.samples["neighbor_disagreement"])
    with pytest.raises(ValueError, match=r"`label_sets` to have shape \(N, C\) with N = 600"):
        analyze_embeddings(planted["x"], planted["ids"], label_sets=sets[:5])
    with pytest.raises(ValueError, match="not both"):
        analyze_embeddings(planted["x"], planted["ids"], planted["labels"], label_sets=sets)
    tiny = analyze_embeddings(np.ones((1, 4), dtype=np.float32), np.array([3]), label_sets=np.ones((1, 2)))
    assert list(tiny.samples.columns) == ["sample_id", *MULTILABEL_EMBEDDING_COLUMNS]


def test_tiny_splits() -> None:
    one = analyze_embeddings(np.ones((1, 4), dtype=np.float32), np.array([7]), np.array([0]))
    assert one.samples["near_duplicate_of"].tolist() == [-1] and np.isnan(one.samples["outlier_score"][0])
    assert one.summary.num_samples == 1
    none = analyze_embeddings(np.ones((0, 4), dtype=np.float32), np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert len(none.samples) == 0 and list(none.samples.columns) == ["sample_id", *EMBEDDING_COLUMNS]
    three = analyze_embeddings(torch.eye(3).half(), np.arange(3), np.array([0, 1, 1]), k=10, projection="pca")
    assert three.summary.k == 2  # k clipped to N - 1; a tensor is accepted like an array
    np.testing.assert_allclose(three.samples["neighbor_disagreement"], [1.0, 0.5, 0.5])


def test_rejects_misaligned_inputs() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"`ids` to be a 1-D integer array of length N = 4 \(rows of `embeddings`\)"):
        analyze_embeddings(x, np.arange(3), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"`labels` to be a 1-D integer array of length N = 4"):
        analyze_embeddings(x, np.arange(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"`pred_probs` to have shape \(N, C\) with N = 4 but got \(3, 2\)"):
        analyze_embeddings(x, np.arange(4), np.zeros(4, dtype=np.int64), pred_probs=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"`embeddings` to be 2-D of shape \(N, D\) but got shape \(4,\)"):
        analyze_embeddings(np.ones(4), np.arange(4), np.zeros(4, dtype=np.int64))


def _merged(planted: dict[str, np.ndarray], result: EmbeddingAnalysis) -> pd.DataFrame:
    frame = result.samples.copy()
    frame["label"] = planted["labels"]
    frame["pred"] = planted["true"]
    frame["suggested_label"] = np.where(np.isin(np.arange(600), planted["flipped"]), planted["true"], planted["labels"])
    frame["is_label_issue"] = np.isin(np.arange(600), planted["flipped"])
    return frame


def test_png_map(planted: dict[str, np.ndarray], result: EmbeddingAnalysis, tmp_path) -> None:
    figure = embedding_map(_merged(planted, result), class_names=["a", "b", "c", "d"])
    legend_texts = {t.get_text() for legend in figure.axes[0].get_children() if hasattr(legend, "get_texts")
                    for t in legend.get_texts()}
    assert {"label issue (12)", "near-duplicate, other label (2)", "near-duplicate, same label (2)"} <= legend_texts
    assert any(text.startswith("outlier (") for text in legend_texts)
    assert {"a", "b", "c", "d"} <= legend_texts
    figure.savefig(tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 10_000


def test_png_map_coloured_by_cluster_without_a_class_label(planted, result) -> None:
    frame = _merged(planted, result).drop(columns="label").assign(label=[[0, 1]] * 600)  # a label set per row
    figure = embedding_map(frame, colour_by="cluster")
    legends = [c for c in figure.axes[0].get_children() if hasattr(c, "get_title") and hasattr(c, "get_texts")]
    titles = {legend.get_title().get_text() for legend in legends}
    assert "cluster" in titles and "given label" not in titles
    with pytest.raises(ValueError, match=r"columns x2d, y2d and cluster but \['cluster'\] are missing"):
        embedding_map(frame.drop(columns="cluster"), colour_by="cluster")


def test_subsample_keeps_marked_rows() -> None:
    n = MAX_POINTS + 500
    frame = pd.DataFrame({"x2d": np.arange(n, dtype=float), "y2d": 0.0, "label": 0, "is_label_issue": False})
    frame.loc[[3, 7, n - 1], "is_label_issue"] = True
    frame.loc[9, "x2d"] = np.nan
    shown = subsample(frame)
    assert len(shown) == MAX_POINTS and {3, 7, n - 1} <= set(shown.index) and 9 not in shown.index


def test_missing_columns_have_a_hint() -> None:
    with pytest.raises(ValueError, match=r"\['x2d', 'y2d'\] are missing\. HINT: merge the `samples`"):
        embedding_map(pd.DataFrame({"label": [0]}))


class _Checker(HTMLParser):
    VOID = {"meta", "br", "input", "link", "img", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_well_formed_self_contained_and_has_hover_fields(
    planted: dict[str, np.ndarray], result: EmbeddingAnalysis
) -> None:
    frame = _merged(planted, result)
    texts = {int(i): f"sample <{i}> & text" for i in frame["sample_id"]}
    page = embedding_map_html(frame, texts, title="Embedding map: train", class_names=["a", "b", "c", "d"])
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and not checker.errors and checker.stack == []
    assert checker.urls == [] and "http://" not in page and "https://" not in page
    for field in ("<b>id</b>", "<b>label</b>", "<b>prediction</b>", "<b>suggested label</b>", "tiptext"):
        assert field in page
    data = json.loads(re.search(r'<script id="dq-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert len(data["x"]) == 600 and data["id"][:2] == [100, 103]
    assert data["text"][0] == "sample <100> & text" and data["names"]["0"] == "a"
    assert data["counts"][:3] == [12, 2, 2]
    assert "</script" not in data["text"][0]
    assert len(page) < 6_000_000


def test_html_bounds_size_and_truncates_text() -> None:
    n = MAX_POINTS + 100
    frame = pd.DataFrame({"x2d": np.random.default_rng(0).normal(size=n), "y2d": 0.0, "label": 0,
                          "sample_id": np.arange(n)})
    page = embedding_map_html(frame, ["x" * 1000] * n)
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert len(data["x"]) == MAX_POINTS and max(len(t) for t in data["text"]) == 200
    assert f"{MAX_POINTS} of {n} points shown" in page
