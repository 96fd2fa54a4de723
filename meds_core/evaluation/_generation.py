"""Samplers for evaluation: vLLM when installed (and a GPU is there), transformers ``generate`` otherwise.

Both take token-id prompts and return token ids of ``n`` completions per prompt, cut before the first EOS.
Sampling is plain temperature / top-p (top-k off unless asked): the model's own generation_config (Qwen's
``repetition_penalty``, ``top_k=20``, ...) is NOT applied, so both engines sample the same distribution.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

ENGINES = ("auto", "hf", "vllm")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str) -> str:
    """'auto' -> 'vllm' when vllm is installed and CUDA is available, else 'hf'."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not valid; use one of {list(ENGINES)}.")
    if engine != "auto":
        if engine == "vllm" and not vllm_available():
            raise ImportError("engine 'vllm' needs vLLM: pip install vllm (GPU), or use engine='hf'.")
        return engine
    if vllm_available():
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "hf"


def load_tokenizer(path: str):
    """The tokenizer saved in ``path``.

    transformers 5 maps some model types (qwen2, phi3, ...) to their own tokenizer class even when the folder's
    ``tokenizer_config.json`` declares the generic ``TokenizersBackend`` / ``PreTrainedTokenizerFast``, which
    rebuilds a custom ``tokenizer.json`` with the model family's pre-tokenizer. A declared generic class is
    honoured here, so the saved ``tokenizer.json`` is used as it is.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    declared = None
    cfg = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            declared = json.load(f).get("tokenizer_class")
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the model's generation config (Qwen lists several), else the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return [int(i) for i in ids]


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """Completion ids before the first EOS id."""
    for j, t in enumerate(ids):
        if t in eos:
            return ids[:j]
    return ids


class HFSampler:
    """Sampling with ``model.generate`` (CPU or one GPU); prompts left-padded in one batch."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.eos = _eos_ids(getattr(model, "generation_config", None), tokenizer)

    def sample(self, prompts: list[list[int]], n: int, *, max_new_tokens: int, temperature: float, top_p: float,
               top_k: int, seed: int) -> list[list[list[int]]]:
        """prompts: B token-id lists -> [B][n] completion token-id lists (before EOS)."""
        import torch
        from transformers import GenerationConfig

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos or [0])[0]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = next(self.model.parameters()).device
        sampling = temperature > 0
        per_prompt = n if sampling else 1  # greedy: one decode, repeated n times
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=per_prompt,
                               temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                               top_k=top_k if sampling and top_k > 0 else None, pad_token_id=pad,
                               eos_token_id=self.eos or None)
        # generate() fills every unset field from model.generation_config (Qwen ships top_k=20,
        # repetition_penalty=1.05, ...): swap in an empty one so only the settings above apply
        saved, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:  # seeded without touching the caller's RNG state
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(seed)
                out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                          generation_config=cfg)
        finally:
            self.model.generation_config = saved
        eos = set(self.eos)
        rows = [cut_at_eos(r, eos) for r in out[:, width:].tolist()]
        if not sampling:
            return [[list(r) for _ in range(n)] for r in rows]
        return [rows[b * n:(b + 1) * n] for b in range(len(prompts))]


class VLLMSampler:
    """Sampling with vLLM (``LLM.generate`` on token-id prompts, ``SamplingParams(n=...)``)."""

    def __init__(self, path: str, tokenizer: Any, *, seed: int, gpu_memory_utilization: float, max_model_len: int):
        from vllm import LLM

        self.llm = LLM(model=path, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len)
        from transformers import GenerationConfig

        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json
            gen = None
        self.eos = set(_eos_ids(gen, tokenizer))

    def sample(self, prompts: list[list[int]], n: int, *, max_new_tokens: int, temperature: float, top_p: float,
               top_k: int, seed: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        kw = {"top_k": top_k} if top_k > 0 else {}
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed, **kw)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[cut_at_eos(list(c.token_ids), self.eos) for c in o.outputs] for o in outs]
