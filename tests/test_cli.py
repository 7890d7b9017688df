"""The command line: `python -m llm_course ...` in a real subprocess."""

import ast
import subprocess
import sys

import pytest
import torch


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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by `train` on a toy corpus."""
    tmp_path = tmp_path_factory.mktemp("cli_run")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 100, encoding="utf-8")
    out = tmp_path / "run"
    proc = run("train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "280", "--steps", "2",
               "--batch-size", "2", "--seq-len", "16", "--checkpoint-interval", "2", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out / "step_0000002"


def test_train_then_generate_from_the_checkpoint_alone(checkpoint):
    """`train` writes checkpoints that `generate --checkpoint` samples from with no other flag."""
    assert {"model.safetensors", "llm_course_config.json", "tokenizer.json"} <= {p.name for p in checkpoint.iterdir()}
    proc = run("generate", "--checkpoint", str(checkpoint), "--prompt", "The quick", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The quick") and proc.stdout.rstrip("\n") != "The quick"  # new tokens follow


def test_generate_stops_at_a_stop_string_and_searches_beams(checkpoint):
    """--stop ends the text where the same sample first contains it; --num-beams is the library's search."""
    from llm_course.beam_search import beam_search
    from llm_course.generation import load_checkpoint

    sample = ["generate", "--checkpoint", str(checkpoint), "--prompt", "The", "--max-new-tokens", "30",
              "--seed", "3", "--repetition-penalty", "1.2", "--min-p", "0.01"]
    free = run(*sample)
    assert free.returncode == 0, free.stderr
    new_text = free.stdout.rstrip("\n")[len("The"):]
    stop = new_text[4:7]
    assert len(stop) == 3
    stopped = run(*sample, "--stop", stop, "--stop", "no such text")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.rstrip("\n") == "The" + new_text[: new_text.index(stop)]

    beams = run("generate", "--checkpoint", str(checkpoint), "--prompt", "The quick", "--max-new-tokens", "6",
                "--num-beams", "3", "--length-penalty", "0.5")
    assert beams.returncode == 0, beams.stderr
    model, tok = load_checkpoint(checkpoint, torch.device("cpu"))
    prompt = tok.encode("The quick")
    expected = beam_search(model, torch.tensor([prompt]), 6, 3, 0.5)
    assert beams.stdout.rstrip("\n") == "The quick" + tok.decode(expected[0, len(prompt):].tolist())


def test_generate_rejects_sampling_flags_with_beams_in_one_line(checkpoint):
    proc = run("generate", "--checkpoint", str(checkpoint), "--prompt", "The", "--num-beams", "2", "--top-k", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--num-beams searches deterministically: --top-k only apply to sampling" in proc.stderr
    proc = run("generate", "--checkpoint", str(checkpoint), "--prompt", "The", "--stop", "")
    assert proc.returncode == 2 and "stop strings must be non-empty strings" in proc.stderr


def test_parallel_training_needs_torchrun(tmp_path):
    proc = run("train", "--parallel", "ddp", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "start the run with torchrun" in proc.stderr
