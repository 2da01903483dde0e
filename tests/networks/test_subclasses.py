"""Tests of bundle.networks.subclasses: WeakMedSAM's k-means sub-class exploration and child targets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from bundle.networks.subclasses import SubclassResult, assign_subclasses, explore_subclasses


def _blobs(rng, centres, per_blob, spread=0.05):
    """Rows around each centre, shuffled; returns ``(features, blob index of each row)``."""
    centres = np.asarray(centres, dtype=float)
    blob = np.repeat(np.arange(len(centres)), per_blob)
    rng.shuffle(blob)
    return centres[blob] + spread * rng.standard_normal((len(blob), centres.shape[1])), blob


def _mixed(seed=0, rows=60, dim=6, num_classes=2):
    """Random features and labels with negatives, single-label and multi-label rows."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, dim))
    labels = (rng.random((rows, num_classes)) < 0.4).astype(np.int64)
    labels[:3] = 0  # certainly some negatives
    labels[3:6] = 1  # and some rows positive for every class
    return features, labels


def test_two_obvious_clusters_are_separated():
    rng = np.random.default_rng(0)
    features, blob = _blobs(rng, [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], per_blob=20)
    labels = np.ones((len(blob), 1))
    result = explore_subclasses(features, labels, num_subclasses=2, seed=0)
    clusters = result.clusters[:, 0]
    assert result.clusters_per_class == (2,)
    # one cluster per blob, whichever id it gets
    assert len(set(zip(blob.tolist(), clusters.tolist()))) == 2
    assert set(clusters.tolist()) == {0, 1}
    # ids are canonical: row 0's cluster is 0
    assert clusters[0] == 0
    assert result.centres[0].shape == (2, 3)


@pytest.mark.parametrize("normalize", [True, False])
def test_deterministic_for_a_seed(normalize):
    features, labels = _mixed()
    a = explore_subclasses(features, labels, num_subclasses=4, seed=3, normalize=normalize)
    b = explore_subclasses(features, labels, num_subclasses=4, seed=3, normalize=normalize)
    assert np.array_equal(a.clusters, b.clusters) and np.array_equal(a.child_targets, b.child_targets)
    for x, y in zip(a.centres, b.centres):
        assert np.array_equal(x, y)


def test_child_target_layout():
    features, labels = _mixed(rows=60, num_classes=2)
    k = 3
    result = explore_subclasses(features, labels, num_subclasses=k)
    targets, clusters = result.child_targets, result.clusters
    assert targets.shape == (60, 2 * k + 1) == (60, result.num_children) and targets.dtype == np.float32
    assert clusters.shape == (60, 2) and np.issubdtype(clusters.dtype, np.integer)
    assert set(np.unique(targets).tolist()) <= {0.0, 1.0}
    for row in range(60):
        expected = np.zeros(2 * k + 1, dtype=np.float32)
        if not labels[row].any():
            expected[0] = 1
            assert (clusters[row] == -1).all()
        for c in range(2):
            if labels[row, c]:
                assert 0 <= clusters[row, c] < k
                expected[1 + c * k + clusters[row, c]] = 1
            else:
                assert clusters[row, c] == -1
        assert np.array_equal(targets[row], expected), row
    # multi-hot: a row positive for both parents has one child of each, and not the negative entry
    both = np.flatnonzero(labels.all(axis=1))
    assert both.size and (targets[both].sum(axis=1) == 2).all() and (targets[both, 0] == 0).all()
    assert (targets[both, 1 : 1 + k].sum(axis=1) == 1).all() and (targets[both, 1 + k :].sum(axis=1) == 1).all()


def test_k_is_clipped_to_distinct_positive_rows():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [3.0, 3.0]])
    labels = np.array([[1, 0], [1, 0], [1, 1], [1, 0], [1, 0], [0, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k-means must not be asked for more clusters than distinct points
        result = explore_subclasses(features, labels, num_subclasses=8, normalize=False)
    assert result.clusters_per_class == (2, 2)
    assert result.num_subclasses == 8 and result.child_targets.shape == (6, 17)
    assert [c.shape for c in result.centres] == [(2, 2), (2, 2)]
    # duplicates share a cluster; only the first k child slots of a class are ever used
    assert result.clusters[0, 0] == result.clusters[1, 0] != result.clusters[2, 0]
    assert result.child_targets[:, 1 + 2 : 1 + 8].sum() == 0 and result.child_targets[:, 9 + 2 :].sum() == 0


def test_normalisation_groups_rows_by_direction():
    # two directions, each at two very different norms
    features = np.array([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0], [0.0, 10.0]])
    labels = np.ones((4, 1))
    by_direction = explore_subclasses(features, labels, num_subclasses=2, normalize=True).clusters[:, 0]
    assert by_direction.tolist() == [0, 0, 1, 1]
    # raw rows: the two short ones are closer to each other than to their long counterparts
    by_norm = explore_subclasses(features, labels, num_subclasses=2, normalize=False).clusters[:, 0]
    assert by_norm[0] == by_norm[2] and by_norm.tolist() != [0, 0, 1, 1]
    # rows equal after normalisation count once when k is clipped
    assert explore_subclasses(features[:2], labels[:2], num_subclasses=8).clusters_per_class == (1,)


def test_a_class_without_positives_gets_no_children():
    features, labels = _mixed(rows=30, num_classes=3)
    labels[:, 1] = 0
    with pytest.warns(UserWarning, match="class 1 has no positive row"):
        result = explore_subclasses(features, labels, num_subclasses=4)
    assert result.clusters_per_class[1] == 0 and result.clusters_per_class[0] > 0
    assert result.centres[1].shape == (0, features.shape[1])
    assert (result.clusters[:, 1] == -1).all()
    assert result.child_targets.shape == (30, 13)
    assert result.child_targets[:, 5:9].sum() == 0
    # a split without any positive at all: every row is negative
    with pytest.warns(UserWarning):
        empty = explore_subclasses(features, np.zeros((30, 3)), num_subclasses=4)
    assert (empty.child_targets[:, 0] == 1).all() and empty.child_targets[:, 1:].sum() == 0


def test_torch_and_bool_inputs():
    features, labels = _mixed()
    from_numpy = explore_subclasses(features, labels, num_subclasses=3)
    from_torch = explore_subclasses(torch.from_numpy(features).float(), torch.from_numpy(labels).bool(), 3)
    assert np.array_equal(from_numpy.child_targets, from_torch.child_targets)
    # [N] labels are one class
    single = explore_subclasses(features, labels[:, 0], num_subclasses=3)
    assert single.child_targets.shape == (60, 4)


@pytest.mark.parametrize(
    "features, labels, k, message",
    [
        (np.zeros(5), np.ones((5, 1)), 2, r"features must be \[N, F\]"),
        (np.zeros((5, 2)), np.ones((4, 1)), 2, "parent_labels must be"),
        (np.zeros((5, 2)), np.full((5, 1), 2), 2, "only 0 and 1"),
        (np.zeros((5, 2)), np.full((5, 1), 0.5), 2, "only 0 and 1"),
        (np.full((5, 2), np.nan), np.ones((5, 1)), 2, "finite"),
        (np.zeros((5, 2)), np.ones((5, 1)), 0, "num_subclasses must be >= 1"),
    ],
)
def test_validation_errors(features, labels, k, message):
    with pytest.raises(ValueError, match=message):
        explore_subclasses(features, labels, num_subclasses=k)


@pytest.mark.parametrize("normalize", [True, False])
def test_json_round_trip(normalize, tmp_path):
    features, labels = _mixed(num_classes=3)
    labels[:, 2] = 0
    with pytest.warns(UserWarning):
        result = explore_subclasses(features, labels, num_subclasses=4, seed=5, normalize=normalize)
    path = tmp_path / "subclasses.json"
    path.write_text(json.dumps(result.to_json()))
    back = SubclassResult.from_json(json.loads(path.read_text()))
    assert np.array_equal(back.child_targets, result.child_targets) and back.child_targets.dtype == np.float32
    assert np.array_equal(back.clusters, result.clusters)
    assert back.clusters_per_class == result.clusters_per_class
    assert (back.num_subclasses, back.feature_dim, back.normalize, back.seed) == (4, 6, normalize, 5)
    for a, b in zip(back.centres, result.centres):
        assert a.shape == b.shape and np.array_equal(a, b)  # exact, not approximate
    assert np.array_equal(assign_subclasses(features, labels, back), result.child_targets)


def test_from_json_rejects_other_records():
    with pytest.raises(ValueError, match="format"):
        SubclassResult.from_json({"clusters": []})
    features, labels = _mixed()
    record = explore_subclasses(features, labels, num_subclasses=2).to_json()
    record["clusters"][0][0] = 7
    with pytest.raises(ValueError, match="cluster id"):
        SubclassResult.from_json(record)


@pytest.mark.parametrize("normalize", [True, False])
def test_assign_gives_training_rows_their_own_clusters(normalize):
    features, labels = _mixed(rows=80, num_classes=2)
    result = explore_subclasses(features, labels, num_subclasses=5, normalize=normalize)
    assert np.array_equal(assign_subclasses(features, labels, result), result.child_targets)


def test_assign_new_rows_to_the_nearest_centre():
    rng = np.random.default_rng(1)
    centres = [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]
    features, blob = _blobs(rng, centres, per_blob=10)
    result = explore_subclasses(features, np.ones((20, 1)), num_subclasses=2)
    cluster_of_blob = {b: result.clusters[blob == b, 0][0] for b in (0, 1)}
    new, new_blob = _blobs(rng, centres, per_blob=3)
    new_labels = np.ones((6, 1))
    new_labels[0] = 0
    targets = assign_subclasses(new, new_labels, result)
    assert targets.shape == (6, 2 * 1 + 1) and targets.dtype == np.float32
    assert targets[0].tolist() == [1.0, 0.0, 0.0]
    for row in range(1, 6):
        expected = [0.0, 0.0, 0.0]
        expected[1 + cluster_of_blob[new_blob[row]]] = 1.0
        assert targets[row].tolist() == expected


def test_assign_rows_of_a_class_without_centres():
    features, labels = _mixed(rows=30, num_classes=2)
    labels[:, 1] = 0
    with pytest.warns(UserWarning):
        result = explore_subclasses(features, labels, num_subclasses=3)
    new_labels = np.array([[0, 1], [1, 1], [0, 0]])
    targets = assign_subclasses(features[:3], new_labels, result)
    # positive only for the class without centres: no child at all, and not the negative entry either
    assert targets[0].sum() == 0
    assert targets[1, 0] == 0 and targets[1, 1:4].sum() == 1 and targets[1, 4:].sum() == 0
    assert targets[2].tolist() == [1.0] + [0.0] * 6


def test_assign_validation():
    features, labels = _mixed()
    result = explore_subclasses(features, labels, num_subclasses=2)
    with pytest.raises(ValueError, match="columns"):
        assign_subclasses(features[:, :3], labels, result)
    with pytest.raises(ValueError, match="classes"):
        assign_subclasses(features, labels[:, :1], result)
    with pytest.raises(ValueError, match="only 0 and 1"):
        assign_subclasses(features, labels * 3, result)
