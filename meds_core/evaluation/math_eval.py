"""evaluate(): sample n completions per problem, grade them, report pass@k, response length and diversity.

For every problem of every data file: render the prompt (Qwen-Math template by default), sample ``n``
completions (vLLM when installed with a GPU, else transformers ``generate``), grade them (math-verify, or exact
match of the last ``\\boxed{}``), and read the MEDS answer feature of each completion (``locate_answers`` +
``extract_features``: the per-layer logit lens at the answer's first token). Per problem it keeps the effective
rank and the top-1 eigen ratio of those features; per dataset it reports pass@k for k = 1, 2, 4, ..., n
(unbiased estimator), the mean response length and the diversity metrics averaged over problems.

Resumable: every scored problem is appended to ``<out>/cache.jsonl`` as soon as its chunk is done, and a rerun
with the same settings (``<out>/settings.json``) skips it. Results go to ``<out>/results.json`` and
``<out>/results.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meds_core.evaluation.diversity import effective_rank, top1_eigen_ratio
from meds_core.evaluation.grading import Grader, graded_text
from meds_core.evaluation.pass_at_k import default_ks, mean_at_n, pass_at_k
from meds_core.evaluation.problems import Problem, load_problems

__all__ = ["QWEN_MATH_INSTRUCTION", "TEMPLATES", "EvalConfig", "check_template", "evaluate", "render_prompt"]

QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = ("qwen-math", "plain")
CACHE, SETTINGS, RESULTS_JSON, RESULTS_MD = "cache.jsonl", "settings.json", "results.json", "results.md"


# ---------------------------------------------------------------------------------------------------- prompts
def check_template(template: str) -> None:
    """Raise ValueError naming ``template`` unless it is one of :data:`TEMPLATES` or holds ``{problem}``."""
    if template not in TEMPLATES and "{problem}" not in template:
        raise ValueError(f"template={template!r} is not valid; use 'qwen-math', 'plain', or a format string holding "
                         "'{problem}' (e.g. '{problem}\\nAnswer:').")


def render_prompt(problem: Problem, tokenizer: Any, template: str = "qwen-math") -> tuple[str, bool]:
    """Prompt text of one problem and whether it went through the tokenizer's chat template.

    * ``'qwen-math'``: user message ``"<problem>\\nPlease reason step by step, and put your final answer within
      \\boxed{}."`` through the chat template when the tokenizer has one (generation prompt added), else as it is;
    * ``'plain'``: the problem text as it is;
    * a string holding ``{problem}``: that string with the problem substituted, no chat template.

    A chat-list prompt (veRL schema) already holds its instruction: it goes through the chat template whatever the
    template (its contents joined by newlines when the tokenizer has none).
    """
    check_template(template)
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if problem.messages is not None:
        messages = [{"role": r, "content": c} for r, c in problem.messages]
        if has_chat:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return "\n".join(c for _, c in problem.messages), False
    if template == "plain":
        return problem.text, False
    if template != "qwen-math":
        return template.replace("{problem}", problem.text), False
    content = f"{problem.text}\n{QWEN_MATH_INSTRUCTION}"
    if has_chat:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return content, False


def _prompt_ids(problem: Problem, tokenizer: Any, template: str) -> list[int]:
    text, chat = render_prompt(problem, tokenizer, template)
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])


# ---------------------------------------------------------------------------------------------------- features
def _answer_features(model: Any, prompt: list[int], responses: list[list[int]], starts: np.ndarray, config: Any,
                     batch_size: int, pad_id: int) -> np.ndarray:
    """MEDS features of each response (prefix + completion ids) after ``prompt``, answers at ``starts`` (from
    ``locate_answers``, -1: none): [n, F] float32, NaN rows where there is no answer."""
    import torch

    from meds_core.step.features import extract_features

    feats = np.full((len(responses), config.use_last_n_layers), np.nan, np.float32)
    todo = np.flatnonzero(starts >= 0)
    for a in range(0, len(todo), batch_size):
        rows = todo[a:a + batch_size]
        seqs = [prompt + responses[i] for i in rows]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        pos = torch.tensor([len(prompt) + int(starts[i]) for i in rows])
        feats[rows] = extract_features(model, ids, mask, pos, config).float().cpu().numpy()
    return feats


def _diversity(feats: np.ndarray) -> tuple[float | None, float | None]:
    """(effective rank, top-1 eigen ratio) of the finite rows; None where fewer than 2 rows or undefined."""
    x = feats[np.isfinite(feats).all(1)]
    if len(x) < 2:
        return None, None
    er, top1 = effective_rank(x), top1_eigen_ratio(x)
    return er, (None if math.isnan(top1) else top1)


# ---------------------------------------------------------------------------------------------------- cache
def _check_settings(out: str, settings: dict[str, Any]) -> None:
    """Write ``settings.json``, or check that the one already there matches (else the cache is not reusable)."""
    path = os.path.join(out, SETTINGS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        diff = {k: (saved.get(k), settings.get(k)) for k in sorted(set(saved) | set(settings))
                if saved.get(k) != settings.get(k)}
        if diff:
            raise ValueError(f"{out} holds results of other settings {diff} (saved, now); use another output folder, "
                             f"or delete {path} and {os.path.join(out, CACHE)} to start over.")
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)


def _read_cache(out: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, problem key) -> cached record; a truncated last line (interrupted write) is ignored."""
    path = os.path.join(out, CACHE)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if not os.path.isfile(path):
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(rec["dataset"], rec["key"])] = rec
    return done


def _append_cache(out: str, records: list[dict[str, Any]]) -> None:
    with open(os.path.join(out, CACHE), "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------- report
def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def _dataset_report(records: list[dict[str, Any]], n: int) -> dict[str, Any]:
    c = np.array([sum(r["correct"]) for r in records], dtype=np.int64)
    nn = np.full(len(records), n, dtype=np.int64)
    tokens = [t for r in records for t in r["num_tokens"]]
    answered = [a for r in records for a in r["has_answer"]]
    return {
        "problems": len(records),
        "n": n,
        "pass@k": {str(k): float(np.mean(pass_at_k(nn, c, k))) for k in default_ks(n)} if len(records) else {},
        "mean@n": mean_at_n(nn, c) if len(records) else None,
        "mean_response_tokens": float(np.mean(tokens)) if tokens else None,
        "answer_rate": float(np.mean(answered)) if answered else None,
        "effective_rank": _mean([r["effective_rank"] for r in records]),
        "top1_eigen_ratio": _mean([r["top1_eigen_ratio"] for r in records]),
        "diversity_problems": sum(r["effective_rank"] is not None for r in records),
    }


def _average(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Macro average over datasets (each dataset weighs the same)."""
    ks = reports[0]["pass@k"].keys() if reports else []
    out: dict[str, Any] = {"problems": sum(r["problems"] for r in reports), "datasets": len(reports),
                           "pass@k": {k: _mean([r["pass@k"].get(k) for r in reports]) for k in ks}}
    for name in ("mean@n", "mean_response_tokens", "answer_rate", "effective_rank", "top1_eigen_ratio"):
        out[name] = _mean([r[name] for r in reports])
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def results_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per dataset, then the average."""
    rows = [*report["datasets"].items(), ("average", report["average"])]
    ks = list(report["average"]["pass@k"])
    head = ["dataset", "problems", *(f"pass@{k}" for k in ks), "mean tokens", "answered", "eff. rank", "top-1 eig."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows:
        cells = [name, str(r["problems"]), *(_fmt(r["pass@k"].get(k)) for k in ks), _fmt(r["mean_response_tokens"], 1),
                 _fmt(r["answer_rate"]), _fmt(r["effective_rank"]), _fmt(r["top1_eigen_ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    s = report["settings"]
    note = (f"\n{report['model']}: n = {s['n']} samples per problem, temperature {s['temperature']}, "
            f"top-p {s['top_p']}, max {s['max_new_tokens']} new tokens, template {s['template']!r}, "
            f"engine {s['engine']}, grader {s['grader']}. pass@k: unbiased estimator, mean over problems; average: "
            "mean over datasets. answered: share of completions with a \\boxed{} answer; eff. rank / top-1 eig.: "
            "diversity of the answer features of one problem's completions, mean over problems.\n")
    return "\n".join(lines) + "\n" + note


def _record(dataset: str, prob: Problem, prompt: list[int], comps: list[list[int]], prefix_ids: list[int],
            tok: Any, grade: Grader, model: Any, config: Any, feature_batch_size: int,
            response_prefix: str = "") -> dict[str, Any]:
    """The cache record of one problem: its graded completions, their lengths, answers and diversity.

    ``prompt`` ends with ``prefix_ids`` (the tokens of ``response_prefix``); ``comps`` are the n generated token-id
    lists. The grader sees ``response_prefix`` + each generated text (:func:`meds_core.evaluation.grading.graded_text`).
    ``config`` None: no features.
    """
    from meds_core.step.answer import locate_answers

    texts = tok.batch_decode(comps, skip_special_tokens=True)
    responses = [prefix_ids + c for c in comps]  # the forced prefix is part of the response, and of the grading
    starts, _ = locate_answers(tok, responses, config.answer_marker if config is not None else "\\boxed{")
    correct = grade.grade([graded_text(response_prefix, t) for t in texts], prob.answer)
    rec = {"dataset": dataset, "key": prob.key, "index": prob.index, "answer": prob.answer,
           "correct": [int(x) for x in correct], "num_tokens": [len(c) for c in comps],
           "has_answer": (starts >= 0).astype(int).tolist(), "effective_rank": None, "top1_eigen_ratio": None,
           "completions": texts}
    if config is not None:
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        feats = _answer_features(model, prompt[:len(prompt) - len(prefix_ids)], responses, starts, config,
                                 feature_batch_size, pad_id)
        rec["effective_rank"], rec["top1_eigen_ratio"] = _diversity(feats)
    return rec


# ---------------------------------------------------------------------------------------------------- main entry
def _load_model(path: str, device: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    return model


@dataclass(frozen=True)
class EvalConfig:
    """The settings of :func:`evaluate`, validated when built (``ValueError`` names the bad value and its range).

    Parameters
    ----------
    n : int, >= 1
        Completions per problem; pass@k is reported for k = 1, 2, 4, ..., n.
    max_new_tokens, temperature, top_p, top_k : sampling (temperature 0: greedy; top_k 0: off).
    template : 'qwen-math' | 'plain' | str with '{problem}'
        See :func:`render_prompt`.
    response_prefix : str
        Text forced at the start of every response (appended to the prompt). It counts as part of the response
        for the answer feature (a prefix ending in ``\\boxed{`` is found by ``locate_answers``) and for grading:
        the grader sees the prefix followed by the generated text, and a ``\\boxed{`` the prefix opens that the
        generation never closes is closed (see :func:`meds_core.evaluation.grading.graded_text`).
    engine : 'auto' | 'hf' | 'vllm'
    grader : 'auto' | 'math-verify' | 'exact'
    seed : int
        Sampling seed (per chunk of problems: seed + index of the chunk's first problem). With the 'hf' engine
        samples depend on ``batch_size`` too.
    batch_size : int, >= 1
        Problems per generation call (each with n samples); also the unit of resumption.
    features : bool
        Compute the diversity metrics (one extra no-grad forward per answered completion).
    feature_layers : int, optional
        Layers per answer feature (default min(14, decoder layers)).
    feature_batch_size : int, >= 1
    limit : int, optional
        First ``limit`` problems of each file.
    device : str, optional
    gpu_memory_utilization : float
        vLLM's share of the GPU memory.
    max_model_len : int, optional
        vLLM's context length (default 32768).
    verbose : bool
        Progress lines on stderr.
    """

    n: int = 16
    max_new_tokens: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    template: str = "qwen-math"
    response_prefix: str = ""
    engine: str = "auto"
    grader: str = "auto"
    seed: int = 0
    batch_size: int = 8
    features: bool = True
    feature_layers: int | None = None
    feature_batch_size: int = 8
    limit: int | None = None
    device: str | None = None
    gpu_memory_utilization: float = 0.6
    max_model_len: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        for name, lo in (("n", 1), ("max_new_tokens", 1), ("batch_size", 1), ("feature_batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name}={value!r} must be an integer >= {lo}.")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 and top_p={self.top_p!r} in (0, 1].")
        check_template(self.template)


def evaluate(model: Any, data: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
             config: EvalConfig | None = None, *, tokenizer: Any = None, **overrides: Any) -> dict[str, Any]:
    """Sample, grade and score a model on problem files; write ``results.json`` / ``results.md`` under ``out``.

    Parameters
    ----------
    model : str or transformers PreTrainedModel
        HF model folder (or hub id), or a loaded causal LM (then pass ``tokenizer``; engine 'hf').
    data : path or sequence of paths
        Problem files (.jsonl / .parquet), see :func:`meds_core.evaluation.problems.load_problems`;
        one dataset per file.
    out : path
        Output folder: ``settings.json``, ``cache.jsonl`` (one line per scored problem, completions included),
        ``results.json``, ``results.md``.
    config : EvalConfig, optional
        The settings (default ``EvalConfig()``).
    tokenizer : optional
        The tokenizer of a loaded ``model`` (default: loaded from the model folder).
    **overrides
        :class:`EvalConfig` fields given by keyword (``n=4, max_new_tokens=64``); they replace those of ``config``.

    Returns
    -------
    dict
        The report written to ``results.json``: ``datasets`` (name -> metrics), ``average``, ``settings``.
    """
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"evaluate() got unknown setting(s) {unknown}; the settings are the EvalConfig fields "
                        f"{sorted(fields)}.")
    cfg = dataclasses.replace(config if config is not None else EvalConfig(), **overrides)
    (n, max_new_tokens, temperature, top_p, top_k, template, response_prefix, engine, grader, seed, batch_size,
     features, feature_layers, feature_batch_size, limit, device, gpu_memory_utilization, max_model_len,
     verbose) = (getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig))
    from meds_core.evaluation._generation import HFSampler, VLLMSampler, load_tokenizer, resolve_engine
    from meds_core.step.config import MEDSConfig

    paths = [os.fspath(data)] if isinstance(data, (str, os.PathLike)) else [os.fspath(p) for p in data]
    datasets = {}
    for p in paths:
        probs = load_problems(p, limit)
        name = probs[0].dataset if probs else os.path.basename(p).split(".")[0]
        if name in datasets:
            raise ValueError(f"two data files are both named {name!r}; rename one (the dataset name is the file "
                             "name without extension).")
        datasets[name] = probs

    hf_model = None if isinstance(model, (str, os.PathLike)) else model
    model_name = os.fspath(model) if hf_model is None else getattr(hf_model, "name_or_path", type(hf_model).__name__)
    if hf_model is not None:
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: evaluate(model, ..., tokenizer=tok).")
        if engine == "vllm":
            raise ValueError("engine='vllm' needs a model path, not a loaded model.")
        engine = "hf"
    engine = resolve_engine(engine)
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_name)
    grade = Grader(grader)
    num_layers = None
    if features:
        from transformers import AutoConfig

        cfg = hf_model.config if hf_model is not None else AutoConfig.from_pretrained(model_name)
        num_layers = getattr(getattr(cfg, "text_config", cfg), "num_hidden_layers", None)
        feature_layers = feature_layers or min(14, num_layers or 14)
    settings = {"model": model_name, "n": n, "max_new_tokens": max_new_tokens, "temperature": float(temperature),
                "top_p": float(top_p), "top_k": top_k, "template": template, "response_prefix": response_prefix,
                "seed": seed, "engine": engine, "grader": grade.name, "features": features,
                "feature_layers": feature_layers if features else None}
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    _check_settings(out, settings)
    cache = _read_cache(out)

    sampler = None
    prefix_ids = list(tok(response_prefix, add_special_tokens=False)["input_ids"]) if response_prefix else []
    config = MEDSConfig(use_last_n_layers=feature_layers) if features else None
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    t0 = time.perf_counter()
    for name, probs in datasets.items():
        todo = [p for p in probs if (name, p.key) not in cache]
        log(f"[meds eval] {name}: {len(probs)} problems, {len(probs) - len(todo)} cached")
        for a in range(0, len(todo), batch_size):
            chunk = todo[a:a + batch_size]
            if sampler is None:
                if engine == "vllm":
                    sampler = VLLMSampler(model_name, tok, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                          max_model_len=max_model_len or 32768)
                else:
                    hf_model = hf_model if hf_model is not None else _load_model(model_name, device)
                    sampler = HFSampler(hf_model, tok)
            prompts = [_prompt_ids(p, tok, template) + prefix_ids for p in chunk]
            samples = sampler.sample(prompts, n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, seed=seed + chunk[0].index)
            if features and hf_model is None:
                hf_model = _load_model(model_name, device)
            records = [_record(name, prob, prompt, comps, prefix_ids, tok, grade, hf_model, config, feature_batch_size,
                               response_prefix) for prob, prompt, comps in zip(chunk, prompts, samples)]
            cache.update({(name, rec["key"]): rec for rec in records})
            _append_cache(out, records)
            done = a + len(chunk)
            log(f"[meds eval] {name}: {done}/{len(todo)} new problems scored ({time.perf_counter() - t0:.1f} s)")

    reports = {name: _dataset_report([cache[(name, p.key)] for p in probs], n) for name, probs in datasets.items()}
    report = {"model": model_name, "settings": settings, "datasets": reports,
              "average": _average(list(reports.values()))}
    with open(os.path.join(out, RESULTS_JSON), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, RESULTS_MD), "w", encoding="utf-8") as f:
        f.write(results_markdown(report))
    return report
