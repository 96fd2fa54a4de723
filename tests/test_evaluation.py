"""evaluate() / `meds eval` on a tiny random Qwen2 saved to a tmp folder (CPU, nothing downloaded)."""

from __future__ import annotations

import json
import math
import string
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from meds_core import MEDSConfig, extract_features, locate_answers  # noqa: E402
from meds_core.cli import main  # noqa: E402
from meds_core.evaluation._generation import HFSampler, load_tokenizer  # noqa: E402
from meds_core.evaluation.diversity import effective_rank, top1_eigen_ratio  # noqa: E402
from meds_core.evaluation.math_eval import QWEN_MATH_INSTRUCTION, EvalConfig, evaluate, render_prompt  # noqa: E402
from meds_core.evaluation.problems import Problem, load_problems  # noqa: E402
from meds_core.testing import char_tokenizer, tiny_qwen2  # noqa: E402

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer(chat: bool = True):
    """Character-level tokenizer over printable ASCII; the chat markers and \\boxed{ are single tokens."""
    specials = ["<pad>", "<|im_end|>", "<|im_start|>", "\\boxed{"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r\t"))
    tok = char_tokenizer(chars, specials, whole=specials[1:], pad_token="<pad>", eos_token="<|im_end|>",
                         additional_special_tokens=["<|im_start|>"])
    if chat:
        tok.chat_template = CHAT
    return tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen2")
    tok = build_tokenizer()
    model = tiny_qwen2(len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=512, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


PROBLEMS = [("1+2=", "3"), ("3+4=", "7"), ("2+2=", "4")]


@pytest.fixture
def data(tmp_path):
    plain = tmp_path / "arith.jsonl"
    plain.write_text("".join(json.dumps({"problem": p, "answer": a, "extra": 1}) + "\n" for p, a in PROBLEMS))
    verl = tmp_path / "verl_set.jsonl"
    rows = [{"data_source": "x", "prompt": [{"role": "user", "content": f"{p} Put the answer in \\boxed{{}}."}],
             "reward_model": {"style": "rule", "ground_truth": a}} for p, a in PROBLEMS[:2]]
    verl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(plain), str(verl)


# ---------------------------------------------------------------------------------------------------- inputs
def test_load_tokenizer_keeps_the_saved_tokenizer(model_dir):
    # transformers 5 maps model_type qwen2 to Qwen2Tokenizer, which would drop the custom \boxed{ token
    tok = load_tokenizer(model_dir)
    ref = build_tokenizer()
    text = "<|im_start|>user\n1+2= \\boxed{3}<|im_end|>"
    assert tok(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
    assert tok.chat_template == CHAT


def test_render_prompt_templates():
    tok, plain_tok = build_tokenizer(), build_tokenizer(chat=False)
    p = Problem("d", 0, "3+4=", None, "7", "k")
    text, chat = render_prompt(p, tok)
    assert chat and text == f"<|im_start|>user\n3+4=\n{QWEN_MATH_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    assert QWEN_MATH_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert render_prompt(p, plain_tok) == (f"3+4=\n{QWEN_MATH_INSTRUCTION}", False)
    assert render_prompt(p, tok, "plain") == ("3+4=", False)
    assert render_prompt(p, tok, "Q: {problem} A: \\boxed{") == ("Q: 3+4= A: \\boxed{", False)
    m = Problem("d", 0, None, (("system", "be brief"), ("user", "3+4=")), "7", "k")
    assert render_prompt(m, tok, "plain")[0].startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert render_prompt(m, plain_tok) == ("be brief\n3+4=", False)
    with pytest.raises(ValueError, match=r"template='qwen' is not valid"):
        render_prompt(p, tok, "qwen")


def test_load_problems_plain_and_verl(data, tmp_path):
    plain, verl = data
    ps = load_problems(plain)
    assert [(p.dataset, p.index, p.text, p.answer) for p in ps] == [("arith", i, q, a)
                                                                    for i, (q, a) in enumerate(PROBLEMS)]
    assert len({p.key for p in ps}) == 3 and load_problems(plain)[0].key == ps[0].key  # stable
    vs = load_problems(verl, limit=1)
    assert len(vs) == 1 and vs[0].text is None and vs[0].messages[0][0] == "user" and vs[0].answer == "3"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0 has columns \['question', 'solution'\]"):
        load_problems(bad)
    with pytest.raises(ValueError, match="must end in .jsonl"):
        (tmp_path / "x.csv").write_text("a")
        load_problems(tmp_path / "x.csv")


def test_load_problems_parquet_verl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "user", "content": "1+2="}], "reward_model": {"ground_truth": "3"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (p,) = load_problems(tmp_path / "train.parquet")
    assert p.dataset == "train" and p.messages == (("user", "1+2="),) and p.answer == "3"


# ---------------------------------------------------------------------------------------------------- evaluate
COMPLETIONS = {  # per problem text: 4 completions, how many are right
    "1+2=": ["so \\boxed{3}", "\\boxed{5}", "none", "\\boxed{3} hmm \\boxed{4}"],  # 1 right
    "3+4=": ["\\boxed{7}", "\\boxed{7}", "\\boxed{7.0}", "\\boxed{8}"],  # 3 right
    "2+2=": ["\\boxed{1}", "\\boxed{2}", "\\boxed{22}", "x"],  # 0 right
}


def fake_sample(self, prompts, n, **kw):
    """Fixed completions, chosen by the problem text found in the decoded prompt."""
    out = []
    for p in prompts:
        text = self.tokenizer.decode(p)
        (q,) = [q for q in COMPLETIONS if q in text]
        out.append([self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS[q][:n]])
    return out


def test_evaluate_scores_fixed_completions_exactly(model_dir, data, tmp_path, monkeypatch):
    pytest.importorskip("math_verify")  # "\\boxed{7.0}" = 7 needs it
    monkeypatch.setattr(HFSampler, "sample", fake_sample)
    report = evaluate(model_dir, data[0], tmp_path / "out", n=4, max_new_tokens=8, verbose=False)
    r = report["datasets"]["arith"]
    c = [1, 3, 0]
    for k in (1, 2, 4):
        want = np.mean([float(1 - Fraction(math.comb(4 - ci, k), math.comb(4, k))) for ci in c])
        assert math.isclose(r["pass@k"][str(k)], want, rel_tol=1e-12)
    assert list(r["pass@k"]) == ["1", "2", "4"] and report["average"]["pass@k"] == r["pass@k"]
    assert math.isclose(r["mean@n"], 4 / 12)
    tokens = [len(c) - (len("\\boxed{") - 1) * c.count("\\boxed{") for v in COMPLETIONS.values() for c in v]
    assert math.isclose(r["mean_response_tokens"], np.mean(tokens))
    assert math.isclose(r["answer_rate"], 10 / 12)

    # diversity of problem "3+4=" recomputed by hand: locate_answers + extract_features + the metrics
    tok = load_tokenizer(model_dir)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tok(render_prompt(load_problems(data[0])[1], tok)[0], add_special_tokens=False)["input_ids"]
    resp = [tok(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS["3+4="]]
    starts, _ = locate_answers(tok, resp)
    config = MEDSConfig(use_last_n_layers=3)
    feats = np.concatenate([extract_features(model, torch.tensor([prompt + r]), None,
                                             torch.tensor([len(prompt) + s]), config).numpy()
                            for r, s in zip(resp, starts)])
    lines = [json.loads(x) for x in (tmp_path / "out" / "cache.jsonl").read_text().splitlines()]
    rec = lines[1]
    assert rec["correct"] == [1, 1, 1, 0] and rec["has_answer"] == [1, 1, 1, 1]
    assert rec["completions"] == COMPLETIONS["3+4="]
    assert math.isclose(rec["effective_rank"], effective_rank(feats), rel_tol=1e-4)
    assert math.isclose(rec["top1_eigen_ratio"], top1_eigen_ratio(feats), rel_tol=1e-3)
    assert lines[2]["effective_rank"] is not None and lines[0]["has_answer"] == [1, 1, 0, 1]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| arith | 3 | 0.333 |" in md and "| average |" in md


def test_evaluate_generates_and_resumes(model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    kw = dict(n=3, max_new_tokens=5, template="plain", response_prefix="\\boxed{", batch_size=2, verbose=False)
    report = evaluate(model_dir, list(data), out, **kw)
    assert set(report["datasets"]) == {"arith", "verl_set"} and report["average"]["problems"] == 5
    assert list(report["average"]["pass@k"]) == ["1", "2", "3"]
    lines = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    for rec in lines:
        assert len(rec["completions"]) == len(rec["correct"]) == 3 and max(rec["num_tokens"]) <= 5
    assert json.loads((out / "results.json").read_text()) == report

    calls = []
    real = HFSampler.sample

    def counting(self, prompts, n, **k):
        calls.append(len(prompts))
        return real(self, prompts, n, **k)

    monkeypatch.setattr(HFSampler, "sample", counting)
    assert evaluate(model_dir, list(data), out, **kw) == report and calls == []  # everything cached
    # the same settings as an EvalConfig; keywords replace its fields (n=4 would not match the cached run)
    assert evaluate(model_dir, list(data), out, EvalConfig(**{**kw, "n": 4}), n=3) == report and calls == []
    (out / "cache.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:-1]) + "\n" + '{"truncated')
    again = evaluate(model_dir, list(data), out, **kw)
    assert calls == [1]  # only the problem whose line was lost is sampled again
    assert again["datasets"]["arith"] == report["datasets"]["arith"]
    with pytest.raises(ValueError, match=r"other settings \{'n': \(3, 4\)\}"):
        evaluate(model_dir, list(data), out, **{**kw, "n": 4})


def test_hf_sampler_uses_only_the_given_settings(model_dir):
    from transformers import AutoModelForCausalLM

    tok, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    model.generation_config.top_k = 1  # would make sampling greedy if it leaked into generate()
    model.generation_config.repetition_penalty = 5.0
    state = torch.random.get_rng_state()
    kw = dict(max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=0)
    (a,) = HFSampler(model, tok).sample([tok("3+4=")["input_ids"]], 8, seed=3, **kw)
    assert len({tuple(x) for x in a}) > 1 and model.generation_config.top_k == 1
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert HFSampler(model, tok).sample([tok("3+4=")["input_ids"]], 8, seed=3, **kw) == [a]  # seeded
    (g,) = HFSampler(model, tok).sample([tok("3+4=")["input_ids"]], 3, **{**kw, "temperature": 0.0}, seed=0)
    assert g[0] == g[1] == g[2]


def test_cli_eval(model_dir, data, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", model_dir, data[0], "--out", str(out), "-n", "2", "--max-new-tokens", "3", "--template", "plain",
               "--no-features", "--temperature", "0", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| arith | 3 |" in printed and "pass@2" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["temperature"] == 0.0 and report["datasets"]["arith"]["effective_rank"] is None
    lines = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    assert all(rec["completions"][0] == rec["completions"][1] for rec in lines)  # greedy


def test_evaluate_argument_errors(model_dir, data, tmp_path):
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"template='qwen' is not valid"):
        EvalConfig(template="qwen")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['temprature'\]; the settings are the EvalConfig"):
        evaluate(model_dir, data[0], tmp_path / "o", temprature=0.5)
    with pytest.raises(ValueError, match="n=0 must be an integer >= 1"):
        evaluate(model_dir, data[0], tmp_path, n=0)
    with pytest.raises(ValueError, match="top_p=0"):
        evaluate(model_dir, data[0], tmp_path, top_p=0)
    with pytest.raises(ValueError, match="engine='gpu' is not valid"):
        evaluate(model_dir, data[0], tmp_path, engine="gpu")
    with pytest.raises(ValueError, match="both named 'arith'"):
        evaluate(model_dir, [data[0], data[0]], tmp_path)


# ---------------------------------------------------------------------------------------------------- prefix
def test_graded_text_closes_only_a_box_the_prefix_opened():
    from meds_core.evaluation.grading import graded_text, last_boxed

    assert graded_text("\\boxed{", "7") == "\\boxed{7}"
    assert graded_text("\\boxed{", "7}") == "\\boxed{7}"
    assert graded_text("\\boxed{", "\\frac{1}{2") == "\\boxed{\\frac{1}{2}}"
    assert graded_text("", "so \\boxed{7") == "so \\boxed{7"  # truncated by the model itself: stays unclosed
    assert graded_text("\\boxed{", "7} then \\boxed{8") == "\\boxed{7} then \\boxed{8"
    assert graded_text("Answer: ", "\\boxed{7}") == "Answer: \\boxed{7}"
    assert last_boxed(graded_text("\\boxed{", "7")) == "7"


def digit_sample(self, prompts, n, **kw):
    """One generated token per completion: the digit '7' for every problem (forced prefix '\\boxed{')."""
    return [[self.tokenizer("7", add_special_tokens=False)["input_ids"]] * n for _ in prompts]


@pytest.mark.parametrize("grader", ["exact", "math-verify"])
def test_response_prefix_is_graded_with_the_response(grader, model_dir, data, tmp_path, monkeypatch):
    if grader == "math-verify":
        pytest.importorskip("math_verify")
    monkeypatch.setattr(HFSampler, "sample", digit_sample)
    report = evaluate(model_dir, data[0], tmp_path / "out", n=2, max_new_tokens=1, template="plain",
                      response_prefix="\\boxed{", grader=grader, features=False, verbose=False)
    lines = [json.loads(x) for x in (tmp_path / "out" / "cache.jsonl").read_text().splitlines()]
    assert [rec["correct"] for rec in lines] == [[0, 0], [1, 1], [0, 0]]  # only "3+4=" has the answer 7
    assert report["settings"]["grader"] == grader and math.isclose(report["datasets"]["arith"]["pass@k"]["1"], 1 / 3)
