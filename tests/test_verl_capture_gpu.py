"""GPU only (skipped without CUDA): capture through veRL's engine forward on an FSDP2-sharded (fully_shard on every
layer, embed_tokens, lm_head, then the root, as veRL 0.9 wraps), bf16, random Qwen2.5-1.5B-shaped model, against an
``output_hidden_states`` oracle of an unsharded copy. Never run so far: no GPU was available to this adapter's work."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fsdp2_bf16_capture_equals_oracle():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from verl_engine_harness import init_gloo, make_batch, make_engine, oracle_features

    from meds_core import MEDSConfig
    from meds_core.adapters.verl.engine_capture import FEATURES, install_capture

    torch.cuda.set_device(0)
    init_gloo("cpu:gloo,cuda:nccl")  # a 1-rank default group; fully_shard below uses a 1-GPU mesh
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False)
    ref = transformers.Qwen2ForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    model = copy.deepcopy(ref)
    mesh = torch.distributed.device_mesh.init_device_mesh("cuda", (1,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model.model.embed_tokens, mesh=mesh, mp_policy=mp)
    fully_shard(model.lm_head, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)

    config = MEDSConfig(use_last_n_layers=14)
    engine = make_engine(model)
    engine._autocast_dtype = torch.bfloat16
    install_capture(engine, config)
    g = torch.Generator().manual_seed(1)
    lens = [300, 512, 128, 777]
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lens]
    from_end = [5, 40, 0, 1]
    data = make_batch(seqs, [100] * 4, from_end, use_dynamic_bsz=True, max_token_len=1024)
    out = engine.forward_backward_batch(data, loss_function=None, forward_only=True)
    got = torch.stack(list(out["model_output"][FEATURES].unbind())).double().cpu()
    expected = oracle_features(ref, [s.cuda() for s in seqs], from_end, config).cpu()
    scale = expected.nan_to_num(0).abs().max()
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=2e-2, atol=2e-2 * float(scale))
