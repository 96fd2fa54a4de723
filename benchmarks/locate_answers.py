"""Benchmark of meds_core.step.answer.locate_answers against the naive per-response method (CPU).

Builds a byte-level BPE tokenizer in-process (no hub download), generates synthetic responses of ~``--tokens``
tokens (most end with ``\\boxed{...}``, ~15% have no marker, ~2% have it far from the end), times
``locate_answers`` (best of 3) with the raw ``tokenizers.Tokenizer`` and its transformers wrapper, and the naive
method (decode the full text, then decode every prefix) on a small subset, extrapolated per 1,000 responses.

    PYTHONPATH=. python benchmarks/locate_answers.py            # full run: 8,192 x 3,000 tokens
    PYTHONPATH=. python benchmarks/locate_answers.py --n 512 --tokens 1000 --naive 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from meds_core.step.answer import locate_answers

MARKER = "\\boxed{"
EOS = "<eos>"
WORDS = ("let", "the", "number", "of", "apples", "be", "so", "we", "get", "hence", "therefore", "note", "that",
         "sum", "area", "wait", "check", "again", "substitute", "into", "equation", "solve", "for", "is", "and")
MATH = ("x", "y", "3 + 4 = 7", "$x^2 = 4$", "\\frac{a}{b}", "\\sqrt{2}", "\\pi r^2", "(x - 1)(x + 2)", "2^{10}",
        "é", "→", "∞", "≤", "数学", "🙂")
ANSWERS = ("42", "\\frac{1}{2}", " -3", "x = 7", "é", "\\sqrt{2}", "1024", "\\pi")


def sentence(rng: random.Random) -> str:
    """One line of synthetic math reasoning."""
    parts = [rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(MATH) for _ in range(rng.randint(4, 30))]
    return " ".join(parts) + rng.choice((". ", ".\n", ", ", "\n\n"))


def build_tokenizer(rng: random.Random) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenizer and decoder) trained on synthetic math text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [sentence(rng) + f"so the answer is {MARKER}{rng.choice(ANSWERS)}}}." for _ in range(5000)]
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def make_responses(tok: Tokenizer, n: int, tokens: int, rng: random.Random) -> tuple[list[list[int]], list[str]]:
    """n responses of ~tokens ids built from pre-encoded chunks; kinds: 'end', 'none' (~15%), 'far' (~2%)."""
    chunks = [e.ids for e in tok.encode_batch([sentence(rng) for _ in range(2000)])]
    tails = [e.ids for e in tok.encode_batch([f"so the answer is {MARKER}{a}}}." for a in ANSWERS])]
    marker_ids = tok.encode(f"the answer is {MARKER}").ids
    eos = tok.token_to_id(EOS)
    responses, kinds = [], []
    for _ in range(n):
        u = rng.random()
        kind = "none" if u < 0.15 else "far" if u < 0.17 else "end"
        ids: list[int] = []
        if kind == "far":
            ids += rng.choice(chunks) + marker_ids + tok.encode(rng.choice(ANSWERS) + "}.").ids
        while len(ids) < tokens - 12:
            ids += rng.choice(chunks)
        ids = ids[: tokens - 12]
        if kind == "end":
            ids += rng.choice(tails)
        responses.append(ids + [eos] * rng.randint(0, 2))
        kinds.append(kind)
    return responses, kinds


def naive(tok: Tokenizer, ids: list[int], marker: str = MARKER) -> int:
    """The anchor: decode the full text, rfind the marker, then decode every prefix until one passes it."""
    text = tok.decode(ids, skip_special_tokens=True)
    pos = text.rfind(marker)
    off = pos + len(marker)
    if pos < 0 or off >= len(text):
        return -1
    for j in range(1, len(ids) + 1):
        if len(tok.decode(ids[:j], skip_special_tokens=True)) > off:
            return j - 1
    return -1


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def row(method: str, n: int, seconds: float, note: str = "") -> dict:
    return {"method": method, "responses": n, "seconds": seconds, "responses_per_s": n / seconds,
            "seconds_per_1000": 1000 * seconds / n, "note": note}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# locate_answers on CPU ({meta['n']} responses x ~{meta['tokens']} tokens)", "",
             f"Machine: {meta['machine']}, {meta['cpus']} CPUs; tokenizers {meta['tokenizers']}. "
             f"Responses: {meta['kinds']}.", "",
             "| method | responses | seconds | responses/s | seconds per 1,000 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        name = r["method"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {name} | {r['responses']} | {r['seconds']:.3f} | {r['responses_per_s']:,.0f} "
                     f"| {r['seconds_per_1000']:.3f} |")
    speedup = rows[-1]["seconds_per_1000"] / rows[0]["seconds_per_1000"]
    lines += ["", f"Speed-up of locate_answers (raw tokenizer) over the naive anchor: {speedup:,.0f}x "
                  "(naive extrapolated from its subset)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="number of responses")
    ap.add_argument("--tokens", type=int, default=3000, help="tokens per response")
    ap.add_argument("--naive", type=int, default=32, help="responses timed with the naive method")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "locate_answers_cpu")
    args = ap.parse_args()

    import tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    tok = build_tokenizer(rng)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    responses, kinds = make_responses(tok, args.n, args.tokens, rng)

    t_raw, (starts, _) = best_of(lambda: locate_answers(tok, responses), args.repeats)
    t_hf, (starts_hf, _) = best_of(lambda: locate_answers(hf, responses), args.repeats)
    subset = list(range(0, args.n, max(1, args.n // args.naive)))[: args.naive]
    t0 = time.perf_counter()
    want = [naive(tok, responses[i]) for i in subset]
    t_naive = time.perf_counter() - t0

    assert starts.tolist() == starts_hf.tolist(), "raw and HF tokenizers disagree"
    assert [int(starts[i]) for i in subset] == want, "locate_answers disagrees with the naive method"
    found = {k: sum(int(s >= 0) for s, kk in zip(starts, kinds) if kk == k) for k in ("end", "far", "none")}
    assert found["none"] == 0 and found["end"] == kinds.count("end") and found["far"] == kinds.count("far")

    rows = [row("locate_answers, tokenizers.Tokenizer", args.n, t_raw, f"best of {args.repeats}"),
            row("locate_answers, PreTrainedTokenizerFast", args.n, t_hf, f"best of {args.repeats}"),
            row("naive: full decode + every prefix", len(subset), t_naive,
                f"measured on a subset of {len(subset)}, per-1,000 extrapolated")]
    meta = {"n": args.n, "tokens": args.tokens, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "tokenizers": tokenizers.__version__,
            "kinds": {k: kinds.count(k) for k in ("end", "none", "far")},
            "mean_tokens": sum(map(len, responses)) / max(len(responses), 1)}
    md = markdown(rows, meta)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
