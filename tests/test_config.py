"""MEDSConfig: defaults, validation messages, dict round trips."""

from __future__ import annotations

import dataclasses

import pytest

from meds_core import MEDSConfig


def test_defaults_are_the_reference_recipe():
    c = MEDSConfig()
    assert (c.cluster_method, c.use_layer_diff, c.use_last_n_layers, c.cluster_penalty_target) == \
        ("hdbscan", False, 14, "wrong")
    assert (c.penalty_coef, c.penalty_cap, c.min_cluster_size, c.min_samples, c.knn_k) == (0.1, 2.0, 2, 1, 3)
    assert (c.noise_policy, c.final_norm, c.answer_marker, c.mixed_groups_only) == ("pool", "last", "\\boxed{", True)


def test_every_field_has_help():
    helps = MEDSConfig.help()
    assert set(helps) == {f.name for f in dataclasses.fields(MEDSConfig)}
    assert all(len(h) > 10 for h in helps.values())


@pytest.mark.parametrize("kw, match", [
    (dict(cluster_method="kmeans"), r"cluster_method='kmeans' is not valid; use one of \['hdbscan', 'single'\]"),
    (dict(cluster_penalty_target="all"), r"cluster_penalty_target='all' is not valid"),
    (dict(noise_policy="drop"), r"noise_policy='drop' is not valid; use one of \['pool', 'ignore'\]"),
    (dict(final_norm="first"), r"final_norm='first'"),
    (dict(knn_metric="euclidean"), r"knn_metric='euclidean'"),
    (dict(use_last_n_layers=0), r"use_last_n_layers=0 must be an integer >= 1"),
    (dict(min_cluster_size=1), r"min_cluster_size=1 must be an integer >= 2"),
    (dict(max_rows_per_memory=2.5), r"max_rows_per_memory=2.5 must be an integer"),
    (dict(use_layer_diff="yes"), r"use_layer_diff='yes' must be True or False"),
    (dict(penalty_coef=-0.1), r"penalty_coef=-0.1 must be a finite number >= 0"),
    (dict(penalty_cap=float("inf")), r"penalty_cap=inf"),
    (dict(answer_marker=""), r"answer_marker='' must be a non-empty string"),
    (dict(backend="cuml-typo"), r"backend='cuml-typo' is not a known clustering backend; use 'auto' or one of"),
])
def test_bad_values_fail_loudly(kw, match):
    with pytest.raises(ValueError, match=match):
        MEDSConfig(**kw)


def test_dict_round_trip_and_unknown_keys():
    c = MEDSConfig(cluster_method="single", use_layer_diff=True, penalty_coef=0.2, backend="sklearn")
    assert MEDSConfig.from_dict(c.to_dict()) == c
    assert MEDSConfig.from_dict(None) == MEDSConfig()
    with pytest.raises(ValueError, match=r"unknown MEDS config key\(s\) \['cluster_mehtod'\]"):
        MEDSConfig.from_dict({"cluster_mehtod": "hdbscan"})


def test_from_dict_accepts_mapping_nodes():
    class Node:  # what an omegaconf DictConfig offers: items()
        def __init__(self, d):
            self._d = d

        def items(self):
            return self._d.items()

    assert MEDSConfig.from_dict(Node({"penalty_coef": 1})).penalty_coef == 1.0


def test_layers_needed():
    assert MEDSConfig(use_last_n_layers=4).layers_needed == 4
    assert MEDSConfig(use_last_n_layers=4, use_layer_diff=True).layers_needed == 5
