"""MEDS capture inside veRL 0.9's real engine forward (FSDPEngineWithLMHead on CPU) vs an output_hidden_states oracle;
Ulysses index mapping on veRL's own pad-and-slice with simulated ranks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("transformers")

from verl_engine_harness import (  # noqa: E402
    VOCAB,
    init_gloo,
    make_batch,
    make_engine,
    oracle_features,
    patch_cpu_devices,
    tiny_qwen2,
)

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.verl.engine_capture import FEATURES, install_capture, sp_pack, sp_unpack  # noqa: E402
from meds_core.adapters.verl.positions import answer_from_end, packed_rows, padded_rows, ulysses_local_rows  # noqa: E402

LENS = [9, 14, 6, 11, 20, 7, 13, 10]
PROMPTS = [3, 4, 2, 5, 6, 3, 4, 5]
FROM_END = [2, 5, 0, 1, 10, 3, 6, 4]  # sample 2 has no answer


@pytest.fixture(scope="module")
def model():
    init_gloo()
    return tiny_qwen2()


@pytest.fixture()
def cpu(monkeypatch):
    patch_cpu_devices(monkeypatch)


def _seqs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in LENS]


def _run(model, config, *, rmpad, dyn, capture=True):
    seqs = _seqs()
    engine = make_engine(model, use_remove_padding=rmpad)
    cap = install_capture(engine, config)
    data = make_batch(seqs, PROMPTS, FROM_END, use_remove_padding=rmpad, use_dynamic_bsz=dyn, max_token_len=30,
                      capture=capture)
    try:
        out = engine.forward_backward_batch(data, loss_function=None, forward_only=True)
    finally:
        cap.remove()
    return seqs, out["model_output"]


@pytest.mark.parametrize("rmpad", [True, False], ids=["remove_padding", "padded"])
@pytest.mark.parametrize("dyn", [False, True], ids=["fixed_micro_batch", "dynamic_bsz"])
@pytest.mark.parametrize("config", [MEDSConfig(use_last_n_layers=3),
                                    MEDSConfig(use_last_n_layers=2, use_layer_diff=True)], ids=["lens", "layer_diff"])
def test_engine_forward_features_equal_oracle(model, cpu, rmpad, dyn, config):
    seqs, out = _run(model, config, rmpad=rmpad, dyn=dyn)
    got = out[FEATURES]
    assert got.is_nested and got.size(0) == len(seqs)
    got = torch.stack([r for r in got.unbind()])
    expected = oracle_features(model, seqs, FROM_END, config)
    assert torch.isnan(got[2]).all() and not torch.isnan(got[[0, 1, 3, 4, 5, 6, 7]]).any()
    torch.testing.assert_close(got.double(), expected, equal_nan=True, rtol=1e-4, atol=1e-4)
    # the rows are the samples' own, in the original order (a shuffled oracle must not match)
    assert not torch.allclose(got[[1, 0]].double(), expected[[0, 1]], atol=1e-3)


def test_dynamic_bsz_really_reorders(model, cpu):
    """The dynamic-batch case above is only a test of the reordering if veRL does reorder these samples."""
    from verl.workers.engine.utils import prepare_micro_batches

    data = make_batch(_seqs(), PROMPTS, FROM_END, use_dynamic_bsz=True, max_token_len=30)
    _, indices = prepare_micro_batches(data=data, dp_group=None, same_micro_num_in_dp=False)
    flat = [i for mb in indices for i in mb]
    assert sorted(flat) == list(range(len(LENS))) and flat != sorted(flat) and len(indices) > 1


def test_last_layer_value_is_the_answer_logit(model, cpu):
    """With final_norm='last', the last per-layer value is the model's own logit of the answer token."""
    seqs, out = _run(model, MEDSConfig(use_last_n_layers=1), rmpad=True, dyn=False)
    got = torch.stack(list(out[FEATURES].unbind()))[:, 0]
    checked = 0
    for i, (seq, fe) in enumerate(zip(seqs, FROM_END)):
        if fe:
            checked += 1
            p = len(seq) - fe - 1
            with torch.no_grad():
                logit = model(input_ids=seq.unsqueeze(0), use_cache=False).logits[0, p, int(seq[p + 1])]
            torch.testing.assert_close(got[i], logit, rtol=1e-4, atol=1e-4)
    assert checked >= 2, checked  # sequences with an answer were compared


def test_unflagged_forward_captures_nothing(model, cpu):
    _, out = _run(model, MEDSConfig(use_last_n_layers=3), rmpad=True, dyn=False, capture=False)
    assert FEATURES not in out and "log_probs" in out


def test_fused_kernels_refused(model):
    engine = make_engine(model)
    engine.engine_config.use_fused_kernels = True
    with pytest.raises(ValueError, match="use_fused_kernels=False"):
        install_capture(engine, MEDSConfig(use_last_n_layers=2))


def test_flag_without_positions_is_a_clear_error(model, cpu):
    from verl.utils import tensordict_utils as tu

    engine = make_engine(model)
    cap = install_capture(engine, MEDSConfig(use_last_n_layers=2))
    data = make_batch(_seqs(), PROMPTS, FROM_END)
    tu.pop(data, "meds_from_end")
    with pytest.raises(KeyError, match="meds_from_end"):
        engine.forward_backward_batch(data, loss_function=None, forward_only=True)
    cap.remove()


@pytest.mark.parametrize("sp", [2, 3, 4])
def test_ulysses_rows_on_verl_slices(model, monkeypatch, sp):
    """veRL's own pad-and-slice (ranks simulated): each answer row is owned by exactly one rank, the local row holds
    the same token, and summing the ranks' sp_pack outputs restores the features (the one all-reduce)."""
    import verl.utils.ulysses as ulysses

    seqs = _seqs()
    packed = torch.cat(seqs).unsqueeze(0)
    cu = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()])
    rows = packed_rows(cu, torch.tensor(FROM_END))
    config = MEDSConfig(use_last_n_layers=3)
    expected = oracle_features(model, seqs, FROM_END, config).float()
    owners = torch.zeros(len(LENS), dtype=torch.long)
    summed = torch.zeros(len(LENS), 4)
    monkeypatch.setattr(ulysses.dist, "get_world_size", lambda group=None: sp)
    for rank in range(sp):
        monkeypatch.setattr(ulysses, "get_ulysses_sequence_parallel_rank", lambda group=None, r=rank: r)
        local, _, pad = ulysses.ulysses_pad_and_slice_inputs(packed, sp_size=sp)
        assert (packed.shape[1] + pad) % sp == 0 and local.shape[1] == (packed.shape[1] + pad) // sp
        lrows = ulysses_local_rows(rows, local.shape[1], rank)
        own = lrows >= 0
        owners += own.long()
        assert torch.equal(local[0, lrows[own]], packed[0, rows[own]])
        partial = torch.where(own[:, None], expected, torch.full_like(expected, float("nan")))
        summed += sp_pack(partial)
    assert owners.tolist() == [0 if fe == 0 else 1 for fe in FROM_END]
    torch.testing.assert_close(sp_unpack(summed), expected, equal_nan=True)


def test_position_helpers_and_errors():
    assert answer_from_end(torch.tensor([5, 4, 3]), torch.tensor([2, -1, 0])).tolist() == [3, 0, 3]
    with pytest.raises(ValueError, match="answer start 4 of sample 1"):
        answer_from_end(torch.tensor([5, 4]), torch.tensor([1, 4]))
    assert padded_rows(torch.tensor([3, 5]), 6, torch.tensor([1, 2])).tolist() == [1, 8]
    with pytest.raises(ValueError, match="from_end=5 for sample 0 of length 5"):
        packed_rows(torch.tensor([0, 5]), torch.tensor([5]))
