"""Small input gaps of the memory, config and penalty: each is a clear error naming the value, or documented."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from meds_core import ErrorMemory, MEDSConfig, penalties, shape_rewards
from meds_core.step.step_stats import step_metrics


def test_keys_given_as_one_string_are_refused_not_split_into_characters():
    memory = ErrorMemory(MEDSConfig(use_last_n_layers=3))
    with pytest.raises(TypeError, match="keys is one str \\('ab'\\)"):
        memory.update("ab", np.ones((2, 3)), [0, 1])
    with pytest.raises(TypeError, match="keys is one bytes"):
        memory.update(b"ab", np.ones((2, 3)), [0, 1])
    assert len(memory) == 0 and memory.step == 0


def test_zero_features_per_rollout_are_refused():
    memory = ErrorMemory(MEDSConfig(use_last_n_layers=3))
    with pytest.raises(ValueError, match=r"shape \(2, 0\): 0 features"):
        memory.update(["a", "b"], np.ones((2, 0)), [0, 1])
    memory.update([], np.ones((0, 0)), [])  # an empty batch stays a no-op step
    assert memory.num_rows == 0


def test_a_ragged_feature_list_is_named_ragged():
    memory = ErrorMemory(MEDSConfig(use_last_n_layers=2))
    with pytest.raises(ValueError, match=r"features is ragged: its rows have lengths \[1, 2\]"):
        memory.update(["a", "b"], [[1.0, 2.0], [1.0]], [0, 1])


@pytest.mark.parametrize("sizes", [[np.nan, 1.0], [1.5, 1.0], [np.inf, 0.0], [-1, 2]])
def test_shaping_refuses_sizes_that_are_not_whole_counts(sizes):
    for fn in (penalties, shape_rewards):
        args = ([0.0, 1.0], sizes, [0, 1]) if fn is shape_rewards else (sizes, [0, 1])
        with pytest.raises(ValueError, match=r"cluster_size must hold counts >= 0 \(whole numbers\)"):
            fn(*args)
    np.testing.assert_allclose(penalties([2.0, 0.0], [0, 0]), 0.1 * np.log1p([2.0, 0.0]))  # whole floats are fine


@pytest.mark.parametrize("kw", [{"penalty_coef": "0.1"}, {"cap": "2"}, {"penalty_coef": True}, {"cap": None}])
def test_shaping_refuses_non_numeric_coefficients_with_a_value_error(kw):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        shape_rewards([0.0], [1], [0], **kw)


def test_from_dict_of_a_non_mapping_names_the_type():
    with pytest.raises(TypeError, match="expects a mapping .* got int 5"):
        MEDSConfig.from_dict(5)
    with pytest.raises(TypeError, match="got list"):
        MEDSConfig.from_dict([("knn_k", 3)])


def test_numpy_scalars_are_accepted_and_stored_as_python_values():
    c = MEDSConfig(knn_k=np.int64(5), use_last_n_layers=np.int32(7), max_total_rows=np.uint32(100),
                   penalty_coef=np.float32(0.5), l2_normalize=np.bool_(False))
    assert (c.knn_k, c.use_last_n_layers, c.max_total_rows) == (5, 7, 100)
    assert type(c.knn_k) is int and type(c.penalty_coef) is float and c.l2_normalize is False
    assert MEDSConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kw, message", [
    ({"max_rows_per_memory": 10**18}, r"max_rows_per_memory=10{18} must be an integer >= 1 \(at most 1000000\)"),
    ({"max_total_rows": 2**40}, r"max_total_rows=.* must be an integer >= 1 \(at most 2147483647\)"),
    ({"max_total_rows": 0}, "max_total_rows=0"),
    ({"penalty_coef": 1e308}, r"penalty_coef=1e\+308 must be a finite number >= 0 \(at most 1e\+06\)"),
    ({"penalty_cap": float("nan")}, "penalty_cap=nan"),
    ({"knn_k": np.float64(3.0)}, r"knn_k=(np.float64\()?3.0\)? must be an integer"),
    ({"use_last_n_layers": 10**6}, "use_last_n_layers=1000000"),
])
def test_absurd_config_values_are_refused_naming_the_value(kw, message):
    with pytest.raises(ValueError, match=message):
        MEDSConfig(**kw)


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML installed: nothing to refuse")
def test_a_backend_whose_library_is_missing_fails_at_construction():
    config = MEDSConfig(backend="cuml")  # a registered name: the config itself is valid
    with pytest.raises(ImportError, match="cuml"):
        ErrorMemory(config)
    ErrorMemory(MEDSConfig(backend="cuml", cluster_method="single"))  # 'single' never clusters: no library needed


def test_evicted_prompts_reach_the_step_metrics():
    memory = ErrorMemory(MEDSConfig(use_last_n_layers=2, max_total_rows=2, cluster_method="single"))
    memory.update(["a", "b"], np.ones((2, 2)), [0, 1])
    keys = ["c", "c"]
    step = memory.update(keys, np.ones((2, 2)), [0, 0])
    out = step_metrics(memory, step, keys, np.zeros(2), np.zeros(2, bool))
    assert out["meds/evicted_prompts"] == 2.0 and out["meds/memory_rows"] == 2.0
