"""Tests of meds_core.step.answer.locate_answers against a slow, obviously-correct oracle.

Tokenizers are built in-process: a byte-level BPE trained on math text without a pre-tokenizer regex (so merges
cross ``{``, e.g. ``{4`` or ``{\\``), its transformers wrapper, and a char-level WordLevel tokenizer.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from meds_core.step.answer import _TAIL_TOKENS, _decoders, locate_answers
from meds_core.testing import char_tokenizer

MARKER = "\\boxed{"
EOS = "<eos>"

FILLERS = [
    "Let x be the number of apples. ", "We compute 3 + 4 = 7. ", "so the answer is ", "Therefore ",
    "Hence $x^2 = 4$ and ", "Note that \\frac{a}{b} = c. ", "\n\n", "Step 2: substitute y = 2x. ",
    "the area is $\\pi r^2$, ", "Wait, let me re-check the sum. ", " ", "{", "}", "$", "é→∞ ", "naïve ≤ 5 ",
    "数学 ", "🙂 ", "boxed ", "\\box ", "{{", "\\\\",
]
ANSWERS = ["42}", "\\frac{1}{2}}", " -3}", "x = 7}", "é}", "∞}", "🙂}", "}", "1", "\\sqrt{2}}", "{4}}", "  12 }"]
UNICODE = ["é", "→", "∞", "数", "🙂", "ß", "Ω"]


def _corpus(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = [rng.choice(FILLERS) for _ in range(rng.randint(1, 6))]
        parts += ["so the answer is ", MARKER, rng.choice(ANSWERS), rng.choice([".", "", " ", "\n"])]
        lines.append("".join(parts))
    lines += ["\\boxed{42}.", "\\boxed{\\frac{1}{2}}", "\\boxed{ -3}", "é→∞ " * 5] * 50
    return lines


@pytest.fixture(scope="session")
def bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # use_regex=False: the whole text is one pre-token, so BPE merges across "{" and spaces.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="session")
def hf(bpe):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)


@pytest.fixture(scope="session")
def hf_generic(bpe):
    """HF wrapper with an overridden _decode: exercises the generic .decode/.batch_decode path."""
    from transformers import PreTrainedTokenizerFast

    class Wrapped(PreTrainedTokenizerFast):
        calls = 0

        def _decode(self, token_ids, **kwargs):
            Wrapped.calls += 1
            return super()._decode(token_ids, **kwargs)

    return Wrapped(tokenizer_object=bpe, eos_token=EOS)


@pytest.fixture(scope="session")
def chars() -> Tokenizer:
    alphabet = sorted(set("".join(_corpus(200)) + "".join(FILLERS + ANSWERS + UNICODE) + "\t\r"))
    return char_tokenizer(alphabet, (EOS, "<unk>"), unk="<unk>", added_specials=(EOS,))


def oracle(decode, ids: list[int], marker: str = MARKER) -> int:
    """Decode the whole response, rfind the marker, then decode EVERY prefix."""
    text = decode(ids)
    pos = text.rfind(marker)
    if pos < 0 or pos + len(marker) >= len(text):
        return -1
    off = pos + len(marker)
    for j in range(1, len(ids) + 1):
        if len(decode(ids[:j])) > off:
            return j - 1
    raise AssertionError("the full decode holds the character, so some prefix must")


def raw_decode(tok: Tokenizer):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def hf_decode(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def check(tok, responses, marker=MARKER, decode=None):
    decode = decode or raw_decode(tok)
    starts, targets = locate_answers(tok, responses, marker)
    want = [oracle(decode, list(r), marker) for r in responses]
    assert starts.tolist() == want
    assert targets.tolist() == [list(r)[s] if s >= 0 else -1 for r, s in zip(responses, want)]
    return starts


# --------------------------------------------------------------------------- the tokenizer really merges


def test_bpe_merges_across_brace(bpe):
    byte_level_brace_then_char = [t for t in bpe.get_vocab() if "{" in t[:-1]]
    assert byte_level_brace_then_char, "the test BPE must merge '{' with a following character"
    ids = bpe.encode("so the answer is \\boxed{42}.").ids
    assert all(bpe.id_to_token(i) != "{" for i in ids), "'{' should not survive as its own token here"


# --------------------------------------------------------------------------- oracle comparisons

piece = st.one_of(st.sampled_from(FILLERS), st.sampled_from(ANSWERS), st.just(MARKER), st.sampled_from(UNICODE),
                  st.text(max_size=8))
texts = st.lists(piece, max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(texts, st.booleans()), min_size=1, max_size=6))
def test_matches_oracle_on_texts(bpe, chars, batch):
    for tok in (bpe, chars):
        eos = tok.token_to_id(EOS)
        check(tok, [tok.encode(t).ids + ([eos] if add_eos else []) for t, add_eos in batch])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matches_oracle_on_random_ids(bpe, data):
    """Random ids (often invalid UTF-8 fragments) with marker ids spliced in."""
    vocab = bpe.get_vocab_size()
    ids_st = st.lists(st.integers(0, vocab - 1), max_size=150)
    marker_ids = bpe.encode(MARKER).ids
    responses = []
    for _ in range(data.draw(st.integers(1, 5))):
        parts = data.draw(st.lists(st.one_of(ids_st, st.just(marker_ids)), max_size=4))
        responses.append([i for p in parts for i in p])
    check(bpe, responses)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=texts, tail=st.lists(st.sampled_from(FILLERS), min_size=10, max_size=120).map("".join),
       answer=st.sampled_from(ANSWERS))
def test_marker_beyond_the_tail_window(bpe, head, tail, answer):
    ids = bpe.encode(head + MARKER + answer + tail).ids
    check(bpe, [ids, ids[-_TAIL_TOKENS:], bpe.encode(tail).ids])


@pytest.mark.parametrize("marker", [MARKER, "answer is", "}", "é→"])
def test_other_markers(bpe, chars, marker):
    rng = random.Random(1)
    lines = ["".join(rng.choice(FILLERS + ANSWERS + [MARKER]) for _ in range(rng.randint(0, 30))) for _ in range(60)]
    for tok in (bpe, chars):
        check(tok, [tok.encode(t).ids for t in lines], marker)


# --------------------------------------------------------------------------- named cases


def holds_first_answer_char(tok, ids: list[int], s: int, char: str) -> bool:
    """Token s holds the first character after the last marker, and that character is ``char``."""
    decode = raw_decode(tok)
    full = decode(ids)
    off = full.rfind(MARKER) + len(MARKER)
    return full[off] == char and len(decode(ids[:s])) <= off < len(decode(ids[: s + 1]))


def test_cases(bpe):
    enc = lambda t: bpe.encode(t).ids  # noqa: E731
    eos = bpe.token_to_id(EOS)
    cases = {  # name: (ids, first answer character or None for -1)
        "no marker": (enc("the answer is 42."), None),
        "marker at end": (enc("so the answer is \\boxed{"), None),
        "marker then eos": (enc("so the answer is \\boxed{") + [eos], None),
        "marker then eos eos": (enc("so the answer is \\boxed{") + [eos, eos], None),
        "empty": ([], None),
        "only eos": ([eos], None),
        "multiple": (enc("\\boxed{1} no wait \\boxed{2} final \\boxed{42}."), "4"),
        "leading space": (enc("so the answer is \\boxed{ -3}"), " "),
        "fused brace": (enc("\\boxed{\\frac{1}{2}}"), "\\"),
        "unicode answer": (enc("x \\boxed{é}"), "é"),
        "answer then eos": (enc("x \\boxed{5}") + [eos], "5"),
        "far": (enc("\\boxed{7}" + " Wait, let me re-check the sum." * 200), "7"),
        "far then near": (enc("\\boxed{7}" + " Step 2: substitute y = 2x." * 100 + "\\boxed{8}"), "8"),
    }
    starts = check(bpe, [ids for ids, _ in cases.values()])
    for (name, (ids, char)), s in zip(cases.items(), starts.tolist()):
        assert (s >= 0) == (char is not None), name
        assert char is None or holds_first_answer_char(bpe, ids, s, char), name


def test_far_marker_found(bpe):
    ids = bpe.encode("so the answer is \\boxed{5}" + " ".join(f"x_{k} = {k * k}" for k in range(300))).ids
    assert len(ids) > 10 * _TAIL_TOKENS
    (s,), (t,) = locate_answers(bpe, [ids])
    assert holds_first_answer_char(bpe, ids, s, "5") and t == ids[s]


def test_far_marker_behind_dense_tail(bpe):
    """Head of long merged tokens, tail of short ones: the first grown window is too small and must double."""
    head = "Note that \\frac{a}{b} = c. " * 300
    tail = "".join(random.Random(3).choice("0123456789+-=()") for _ in range(900))
    ids = bpe.encode(head + "\\boxed{9}" + tail).ids
    assert len(bpe.encode(tail).ids) > 4 * len(ids) // 10  # the tail holds many more tokens per character
    starts = check(bpe, [ids, ids[-500:], ids[:-1]])
    assert holds_first_answer_char(bpe, ids, int(starts[0]), "9")


def test_outputs_are_int64(bpe):
    starts, targets = locate_answers(bpe, [bpe.encode("\\boxed{1}").ids, []])
    assert starts.dtype == np.int64 and targets.dtype == np.int64
    assert starts.shape == targets.shape == (2,)
    starts, targets = locate_answers(bpe, [])
    assert starts.shape == targets.shape == (0,) and starts.dtype == targets.dtype == np.int64


def test_raw_and_hf_agree(bpe, hf, hf_generic):
    rng = random.Random(2)
    lines = ["".join(rng.choice(FILLERS + ANSWERS + [MARKER]) for _ in range(rng.randint(0, 80))) for _ in range(80)]
    eos = bpe.token_to_id(EOS)
    responses = [bpe.encode(t).ids + [eos] * rng.randint(0, 2) for t in lines]
    raw = locate_answers(bpe, responses)
    for tok in (hf, hf_generic):
        got = locate_answers(tok, responses)
        assert all(np.array_equal(a, b) for a, b in zip(raw, got))
    assert raw[0].tolist() == [oracle(hf_decode(hf), r) for r in responses]


def test_generic_hf_path_decodes_few_prefixes(hf_generic):
    ids = hf_generic.encode("so the answer is \\boxed{5}" + " Step 2: substitute y = 2x." * 400)
    type(hf_generic).calls = 0
    (s,), _ = locate_answers(hf_generic, [ids])
    assert s == oracle(hf_decode(hf_generic), ids)
    assert type(hf_generic).calls < 60, "must not decode every prefix"


def test_tensor_and_numpy_inputs(bpe):
    torch = pytest.importorskip("torch")
    lists = [bpe.encode(t).ids for t in ["a \\boxed{42}.", "no marker", "", "\\boxed{\\frac{1}{2}}"]]
    want = locate_answers(bpe, lists)
    for conv in (np.asarray, lambda r: torch.tensor(r, dtype=torch.long), tuple,
                 lambda r: np.asarray(r, dtype=np.int32)):
        got = locate_answers(bpe, [conv(r) for r in lists])
        assert all(np.array_equal(a, b) for a, b in zip(want, got))
    same_len = [r[:3] for r in lists if len(r) >= 3]
    for batch in (np.array(same_len), torch.tensor(same_len), tuple(same_len)):
        got = locate_answers(bpe, batch)
        assert got[0].tolist() == locate_answers(bpe, same_len)[0].tolist()


def test_errors(bpe):
    with pytest.raises(TypeError, match="tokenizer must be .*got builtins.dict"):
        locate_answers({}, [[1, 2]])
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        locate_answers(object(), [[1, 2]])
    with pytest.raises(ValueError, match="marker must be a non-empty str.*got ''"):
        locate_answers(bpe, [[1, 2]], marker="")
    with pytest.raises(ValueError, match="marker must be a non-empty str.*got None"):
        locate_answers(bpe, [[1, 2]], marker=None)
    with pytest.raises(TypeError, match="responses must be a sequence.*got set"):
        locate_answers(bpe, {1, 2})
    with pytest.raises(TypeError, match="responses must be a sequence.*got str"):
        locate_answers(bpe, "\\boxed{1}")
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        locate_answers(bpe, np.array([1, 2, 3]))
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        locate_answers(bpe, torch.tensor([1, 2, 3]))
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.array(bpe.encode("\\boxed{1}").ids), np.array([], dtype=np.int64)]
    assert locate_answers(bpe, ragged)[0][1] == -1 and locate_answers(bpe, ragged)[0][0] >= 0
    with pytest.raises(TypeError, match="responses\\[1\\] must be"):
        locate_answers(bpe, [[1], 5])


def test_decoders_helper(bpe, hf):
    ids = bpe.encode("x \\boxed{ 1}").ids + [bpe.token_to_id(EOS)]
    for tok in (bpe, hf):
        decode, batch_decode = _decoders(tok)
        assert decode(ids) == "x \\boxed{ 1}"
        assert batch_decode([ids, []]) == ["x \\boxed{ 1}", ""]
        assert batch_decode([]) == []
