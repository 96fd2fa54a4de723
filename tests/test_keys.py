"""prompt_key: one memory key per prompt for every adapter, and memory files keyed the older veRL way stay readable."""

from __future__ import annotations

import json
import unicodedata

import numpy as np

from meds_core import ErrorMemory, MEDSConfig, stable_prompt_key
from meds_core.adapters.verl.driver import prompt_keys
from meds_core.step.keys import prompt_key

CAFE = "Combien coûte un café ?"  # non-ASCII
CHAT = [{"role": "user", "content": CAFE}]


def _old_verl_key(prompt) -> str:
    """What the veRL adapter computed for a chat prompt before the keys were unified (escaped non-ASCII)."""
    return stable_prompt_key(json.dumps(prompt, sort_keys=True, default=str))


def test_text_prompts_are_their_stable_key():
    assert prompt_key(CAFE) == stable_prompt_key(CAFE)
    assert prompt_key("  a   b ") == prompt_key("a b")


def test_chat_prompts_keep_non_ascii_so_unicode_forms_share_a_key():
    nfd = [{"role": "user", "content": unicodedata.normalize("NFD", CAFE)}]
    assert prompt_key(nfd) == prompt_key(CHAT)  # NFC normalisation reaches the characters
    assert _old_verl_key(nfd) != _old_verl_key(CHAT)  # escaped, it did not: one prompt, two keys
    assert prompt_key(CHAT) == stable_prompt_key(json.dumps(CHAT, sort_keys=True, ensure_ascii=False))
    ascii_chat = [{"role": "user", "content": "1+1="}]
    assert prompt_key(ascii_chat) == _old_verl_key(ascii_chat)  # ASCII prompts keep their keys


def test_veRL_and_TRL_paths_give_one_key():
    uids = ["u0", "u1"]
    other = [{"role": "user", "content": "2+2="}]
    assert prompt_keys([CHAT, other], uids, "raw_prompt") == [prompt_key(CHAT), prompt_key(other)]


def test_memory_written_with_the_old_key_keeps_its_prompt(tmp_path):
    config = MEDSConfig(use_last_n_layers=2)
    mem = ErrorMemory(config)
    old = _old_verl_key(CHAT)
    assert old != prompt_key(CHAT)
    mem.update([old] * 3, np.zeros((3, 2), np.float32) + np.arange(3)[:, None], np.zeros(3, np.int8))
    mem.save(str(tmp_path / "m.bin"))
    loaded = ErrorMemory.load(str(tmp_path / "m.bin"), config)
    assert prompt_key(CHAT, known=loaded) == old
    other = [{"role": "user", "content": "2+2="}]
    assert prompt_keys([CHAT, other], ["u0", "u1"], "raw_prompt", known=loaded) == [old, prompt_key(other)]
    assert prompt_key(CHAT, known=ErrorMemory(config)) == prompt_key(CHAT)  # new memories use the new key
    # once the new key is stored too, it wins
    mem.update([prompt_key(CHAT)], np.ones((1, 2), np.float32), np.zeros(1, np.int8))
    assert prompt_key(CHAT, known=mem) == prompt_key(CHAT)
