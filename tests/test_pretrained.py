"""The cached pretrained model: trained once, reused, keyed by recipe and code, safe with two processes."""

import dataclasses
import shutil
import threading

import pytest
import torch

from llm_course import cache, pretrained
from llm_course.data import default_corpus
from llm_course.pretrained import Recipe, load_pretrained, pretrained_dir, pretrained_info, recipe_key
from llm_course.trainer import TrainConfig
from llm_course.transformer import TransformerConfig


@pytest.fixture()
def recipe(tmp_path) -> Recipe:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(default_corpus()[:20_000], encoding="utf-8")
    return Recipe(
        name="test",
        vocab_size=300,
        model=TransformerConfig(vocab_size=300, context_length=16, d_model=32, n_layers=1, n_heads=2),
        train=TrainConfig(batch_size=2, seq_len=16, max_steps=4, warmup_steps=1, eval_interval=0, eval_batches=1),
        corpus=str(corpus),
        checkpoint_interval=2,
    )


def test_trains_once_then_reads_the_cache(tmp_path, recipe):
    lines = []
    model, tok = load_pretrained(recipe, cache=tmp_path / "cache", log=lines.append)
    assert any("training the pretrained model 'test' once" in line for line in lines)
    assert not model.training and tok.n_vocab == 300 and tok.special_tokens == {"<|endoftext|>": 299}
    folder = pretrained_dir(recipe, tmp_path / "cache")
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors", "llm_course_config.json", "tokenizer.json", "info.json", "cache.json"
    }  # fmt: skip
    info = pretrained_info(recipe, tmp_path / "cache")
    assert len(info["history"]["loss"]) == 4 and info["val_history"]["step"] == [4]
    lines.clear()
    again, _ = load_pretrained(recipe, cache=tmp_path / "cache", log=lines.append)
    assert lines == []  # no training the second time
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_key_changes_with_the_recipe_and_the_code(recipe, monkeypatch, tmp_path):
    key = recipe_key(recipe)
    assert recipe_key(dataclasses.replace(recipe, note="only words")) == key
    assert recipe_key(dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, lr=1e-2))) != key
    assert recipe_key(recipe, text="another corpus") != key
    # The code: the keys hash a copy of the package, in which attention.py (imported through the
    # transformer and the trainer, never by pretrained.py itself) is edited.
    copy = shutil.copytree(cache.PACKAGE_ROOT, tmp_path / "llm_course", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_ROOT", copy)
    assert recipe_key(recipe) == key
    attention = copy / "attention.py"
    attention.write_text(attention.read_text() + "\n\ndef edited():\n    return 1\n")
    assert recipe_key(recipe) != key


def test_cache_location_follows_the_environment(tmp_path, monkeypatch, recipe):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path / "elsewhere"))
    assert pretrained_dir(recipe).parent == tmp_path / "elsewhere" / "pretrained"
    with pytest.raises(ValueError, match="no pretrained model called 'huge'"):
        pretrained_dir("huge")


def test_two_concurrent_loads_train_once(tmp_path, recipe):
    lines, results = [], []

    def load():
        results.append(load_pretrained(recipe, cache=tmp_path, log=lines.append))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and sum("training the pretrained model" in line for line in lines) == 1
    leftovers = [p.name for p in (tmp_path / "pretrained").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_an_unfinished_folder_is_not_taken_for_a_model(tmp_path, recipe):
    folder = pretrained_dir(recipe, tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half a file")  # a crash before the entry was finished
    model, _ = load_pretrained(recipe, cache=tmp_path, log=None)
    assert (folder / "info.json").exists() and sum(p.numel() for p in model.parameters()) > 0


def test_the_course_recipe_is_the_tiny_preset():
    r = pretrained.tiny_recipe()
    assert r.model.vocab_size == r.vocab_size == 4096 and r.model.n_layers == 4 and r.model.d_model == 128
    assert r.train.seq_len <= r.model.context_length
