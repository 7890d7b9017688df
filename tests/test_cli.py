"""The command line: `python -m llm_course ...` in a real subprocess."""

import ast
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "llm_course", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0 and "tokenize" in proc.stdout


def test_tokenize_trains_saves_and_encodes(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("low lower lowest newer newest " * 50, encoding="utf-8")
    out = tmp_path / "tok.json"
    proc = run("tokenize", "--corpus", str(corpus), "--vocab-size", "270", "--save", str(out), "--text", "lowest")
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    ids_line, tokens_line = proc.stdout.strip().splitlines()[-2:]
    assert "".join(ast.literal_eval(tokens_line)) == "lowest"
    assert len(ast.literal_eval(ids_line)) < len("lowest")  # merges were applied
    again = run("tokenize", "--load", str(out), "--text", "lowest")
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-2] == ids_line


def test_bad_input_is_one_clear_line(tmp_path):
    proc = run("tokenize", "--corpus", str(tmp_path / "missing.txt"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: corpus path") and "Traceback" not in proc.stderr
    proc = run("tokenize", "--vocab-size", "10")
    assert proc.returncode == 2 and "vocab_size must be at least 256" in proc.stderr
