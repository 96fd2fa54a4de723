"""Offline stand-ins for the Hugging Face Hub models and datasets that TRL's GRPO tests load.

:func:`build_mirror` writes a folder laid out as ``<org>/<name>/`` (e.g. ``trl-internal-testing/zen``). Run code
with that folder as the working directory and the tests' hub ids resolve to it with no patching:
``from_pretrained("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5")`` and ``load_dataset("trl-internal-testing/zen",
...)`` both take an existing local directory before they would ask the Hub (set ``HF_HUB_OFFLINE=1`` as well, so a
missing stand-in fails at once instead of reaching for the network).

Models: tiny random Qwen2 / Qwen3 / Qwen3-MoE models built from a config (hidden 8, 2 layers, 4 heads, Qwen's
151 936-row vocabulary) and saved with ``save_pretrained``; a seed makes them reproducible.

Tokenizer (built in-process with ``tokenizers``): a byte-level BPE without merges whose ids follow Qwen's layout
where TRL's tests depend on it (they hard-code completions as Qwen token ids):

- ids 0-255: the 256 byte symbols in GPT-2's byte order (Qwen's first 256 ids, e.g. 0 ``!``, 198 newline, 220 space);
- Qwen's special tokens at their ids (151643 ``<|endoftext|>`` ... 151668 ``</think>``), eos ``<|im_end|>``, pad
  ``<|endoftext|>``;
- the multi-character tokens that the tests' hard-coded tool-call completions use, at their Qwen ids
  (:data:`QWEN_WORDS`, read off the decoded strings the tests give next to each id list);
- every other id below 151643 a numbered filler word ``" x<id>"``. A random model therefore writes text such as
  ``" x8311 x120 x77013"``, so the answer marker :data:`FILLER_MARKER` occurs in nearly every random completion and
  MEDS has an answer token to read.

Encoding uses bytes and the special tokens only (no merges), so it is prefix-preserving; decoding covers every id.
Chat templates are TRL's own Qwen 2.5 / Qwen 3 templates, read from the installed ``trl`` package, so TRL's tool-call
support recognises them.

Datasets: ``trl-internal-testing/zen`` with configs ``standard_prompt_only`` (column ``prompt``: text) and
``conversational_prompt_only`` (column ``prompt``: one user message), splits ``train`` (3 rows; the real one has
17) and ``test`` (2 rows). The prompts are the aphorisms of Python's own ``this`` module without their last word.
"""

from __future__ import annotations

import codecs
import json
import os

QWEN_SPECIALS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>", 151648: "<|box_start|>", 151649: "<|box_end|>", 151650: "<|quad_start|>",
    151651: "<|quad_end|>", 151652: "<|vision_start|>", 151653: "<|vision_end|>", 151654: "<|vision_pad|>",
    151655: "<|image_pad|>", 151656: "<|video_pad|>", 151657: "<tool_call>", 151658: "</tool_call>",
    151659: "<|fim_prefix|>", 151660: "<|fim_middle|>", 151661: "<|fim_suffix|>", 151662: "<|fim_pad|>",
    151663: "<|repo_name|>", 151664: "<|file_sep|>", 151665: "<tool_response>", 151666: "</tool_response>",
    151667: "<think>", 151668: "</think>",
}
# Added tokens that are not "special" in Qwen's tokenizer (they survive skip_special_tokens=True).
QWEN_NON_SPECIAL = {151657, 151658, 151665, 151666, 151667, 151668}
# Multi-character tokens at their Qwen ids, as text (TRL's tests spell the completions they hard-code).
QWEN_WORDS = {
    4913: '{"', 606: "name", 788: '":', 330: ' "', 497: '",', 16370: "arguments", 5212: ' {"', 11248: "}}\n",
    95642: '"}}\n', 35744: "increment", 16252: " increment", 450: "de", 13477: "crement", 9520: "step",
    64648: "multiply", 93054: "_multiply", 22785: "_tool", 7692: "async", 927: "sh", 411: "out", 1318: "text",
    6023: "hi", 2765: " won", 944: "'t", 1513: " don", 1414: " know", 894: " any", 5392: " tool", 17453: "Done",
    14172: "tool", 6659: "call", 397: ">\n", 522: "</", 314: " {", 293: " b",
}
VOCAB_SIZE = 151936  # Qwen2.5 / Qwen3 embedding rows
FILLER_MARKER = " x"
ORG = "trl-internal-testing"
QWEN2_CAUSAL = f"{ORG}/tiny-Qwen2ForCausalLM-2.5"
QWEN2_REWARD = f"{ORG}/tiny-Qwen2ForSequenceClassification-2.5"
QWEN3_CAUSAL = f"{ORG}/tiny-Qwen3ForCausalLM"
QWEN3_REWARD = f"{ORG}/tiny-Qwen3ForSequenceClassification"
QWEN3_MOE_CAUSAL = f"{ORG}/tiny-Qwen3MoeForCausalLM"
ZEN = f"{ORG}/zen"
MODELS = {  # hub id -> (architecture, TRL chat template file)
    QWEN2_CAUSAL: ("Qwen2ForCausalLM", "qwen2_5.jinja"),
    QWEN2_REWARD: ("Qwen2ForSequenceClassification", "qwen2_5.jinja"),
    QWEN3_CAUSAL: ("Qwen3ForCausalLM", "qwen3.jinja"),
    QWEN3_REWARD: ("Qwen3ForSequenceClassification", "qwen3.jinja"),
    QWEN3_MOE_CAUSAL: ("Qwen3MoeForCausalLM", "qwen3.jinja"),
}
_STAMP = ".standins.json"
_VERSION = 2  # bump when the stand-ins change, so cached mirrors are rebuilt


def _byte_symbols() -> dict[int, str]:
    """Byte -> its byte-level BPE symbol, in GPT-2's (and Qwen's) id order: the dict's order is the ids 0-255."""
    first = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    rest = [b for b in range(256) if b not in first]
    return {**{b: chr(b) for b in first}, **{b: chr(256 + n) for n, b in enumerate(rest)}}


def _byte_level(text: str, symbols: dict[int, str]) -> str:
    return "".join(symbols[b] for b in text.encode("utf-8"))


def qwen_like_tokenizer(chat_template: str):
    """A ``PreTrainedTokenizerFast`` with Qwen's byte, special and test-word ids (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    by_byte = _byte_symbols()
    vocab = {sym: i for i, sym in enumerate(by_byte.values())}
    words = {i: _byte_level(text, by_byte) for i, text in QWEN_WORDS.items()}
    taken = set(vocab)
    for i in range(256, min(QWEN_SPECIALS)):
        tok = words.get(i) or _byte_level(f" x{i}", by_byte)
        if tok in taken:
            raise AssertionError(f"stand-in vocabulary: token {tok!r} at id {i} is already used")
        vocab[tok] = i
        taken.add(tok)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(QWEN_SPECIALS[i], special=i not in QWEN_NON_SPECIAL, normalized=False)
                    for i in sorted(QWEN_SPECIALS)])
    for i, text in QWEN_SPECIALS.items():
        if tok.token_to_id(text) != i:
            raise AssertionError(f"stand-in vocabulary: {text} got id {tok.token_to_id(text)}, expected {i}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template, model_max_length=32768)


def _trl_chat_template(name: str) -> str:
    import trl

    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", name), encoding="utf-8") as f:
        return f.read()


def tiny_model(architecture: str, seed: int = 0):
    """A random tiny model of ``architecture`` (hidden 8, 2 layers) on Qwen's vocabulary."""
    import torch
    import transformers

    family = "Qwen3Moe" if architecture.startswith("Qwen3Moe") else architecture[:5]
    config_cls = getattr(transformers, f"{family}Config")
    kw = dict(vocab_size=VOCAB_SIZE, hidden_size=8, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
              bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    if family != "Qwen2":
        kw["head_dim"] = 2
    if family == "Qwen3Moe":
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
    if architecture.endswith("SequenceClassification"):
        kw["num_labels"] = 1
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config_cls(**kw))
    if model.can_generate():
        model.generation_config.eos_token_id = [151645, 151643]
        model.generation_config.pad_token_id = 151643
    return model


# The real train split has 17 rows; 3 keep each test's default 3 epochs at 9 steps instead of 51 (CPU cost), and
# no test's assertions depend on the row count.
ZEN_TRAIN, ZEN_TEST = 3, 2


def zen_prompts() -> list[str]:
    """The 19 aphorisms of ``this`` without their last word."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints the poem
        import this

    lines = [line for line in codecs.decode(this.s, "rot13").splitlines()[2:] if line.strip()]
    return [line.rsplit(" ", 1)[0] for line in lines]


def _write_zen(folder: str) -> None:
    from datasets import Dataset

    prompts = zen_prompts()
    splits = {"train": prompts[:ZEN_TRAIN], "test": prompts[ZEN_TRAIN:ZEN_TRAIN + ZEN_TEST]}
    configs = {
        "standard_prompt_only": lambda ps: {"prompt": ps},
        "conversational_prompt_only": lambda ps: {"prompt": [[{"role": "user", "content": p}] for p in ps]},
    }
    card = ["---", "configs:"]
    for name, columns in configs.items():
        card += [f"- config_name: {name}", "  data_files:"]
        for split, ps in splits.items():
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            Dataset.from_dict(columns(ps)).to_parquet(os.path.join(folder, name, f"{split}-00000-of-00001.parquet"))
            card += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    card += ["---", "", "Offline stand-in for trl-internal-testing/zen (prompt-only configs).", ""]
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(card))


def build_mirror(root: str, seed: int = 0) -> str:
    """Write the stand-ins under ``root`` (skipped when an up-to-date build is there); returns ``root``."""
    stamp = os.path.join(root, _STAMP)
    want = {"version": _VERSION, "seed": seed, "models": sorted(MODELS), "datasets": [ZEN]}
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == want:
                return root
    templates: dict[str, object] = {}
    for hub_id, (architecture, template) in MODELS.items():
        folder = os.path.join(root, hub_id)
        tiny_model(architecture, seed).save_pretrained(folder)
        if template not in templates:
            templates[template] = qwen_like_tokenizer(_trl_chat_template(template))
        templates[template].save_pretrained(folder)
    _write_zen(os.path.join(root, ZEN))
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump(want, f)
    return root
