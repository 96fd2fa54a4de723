"""GPU only (skipped without CUDA): FeatureCapture and extract_features on CUDA models (the fused CUDA gather kernel
where it is built, else the torch path) against test_capture's output_hidden_states oracle, same tolerances."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from test_capture import FAMILIES, _left_padded_batch, _make, _oracle, _position_ids, _rows_targets, _tol  # noqa: E402

from meds_core.step.capture import FeatureCapture  # noqa: E402
from meds_core.step.config import MEDSConfig  # noqa: E402
from meds_core.step.features import extract_features  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("final_norm", ["last", "all", "none"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_capture_matches_oracle(family, final_norm, dtype):
    model = _make(family, dtype).to("cuda")
    config = MEDSConfig(use_last_n_layers=4, final_norm=final_norm)
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    ids, mask = ids.cuda(), mask.cuda()
    expected = _oracle(model, ids, mask, _position_ids(mask), rows.cuda(), targets.cuda(), config).cpu()
    assert torch.isnan(expected[3]).all() and torch.isfinite(expected[:3]).all()

    got = extract_features(model, ids, mask, answer_positions.cuda(), config)
    assert got.device.type == "cuda" and got.dtype == torch.float32 and got.shape == (4, 4)
    torch.testing.assert_close(got.cpu(), expected, equal_nan=True, **_tol(dtype, final_norm))

    with FeatureCapture(model, config) as cap, torch.no_grad():
        cap.arm(rows.cuda(), targets.cuda())
        model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask))
        direct = cap.collect()
    torch.testing.assert_close(direct.cpu(), expected, equal_nan=True, **_tol(dtype, final_norm))
