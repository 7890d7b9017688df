"""Corpus loading: the embedded default, files, folders, and clear errors."""

import pytest

from llm_course.data import default_corpus, load_corpus, stdlib_source_corpus, train_val_split


def test_default_corpus_is_the_cpython_documentation():
    text = load_corpus()
    assert text == default_corpus()
    assert 400_000 < len(text.encode("utf-8")) < 2_000_000
    assert "assert" in text and "The \"if\" statement" in text


def test_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\xff\xfe")
    assert load_corpus(tmp_path / "a.txt") == "first"
    assert load_corpus(tmp_path) == "first\n\nsecond\n\nthird"  # sorted paths, .bin ignored
    assert load_corpus(str(tmp_path), suffixes=(".md",)) == "third"


def test_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt' does not exist"):
        load_corpus(tmp_path / "nowhere.txt")


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\t ")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        load_corpus(empty)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="has no files ending in .txt"):
        load_corpus(folder)


def test_undecodable_file_names_the_file_and_byte(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8 \(byte 3 is b'\\xe9'\)"):
        load_corpus(bad)


def test_stdlib_source_corpus_respects_max_bytes():
    text = stdlib_source_corpus(max_bytes=200_000)
    assert 200_000 <= len(text.encode("utf-8")) < 2_000_000
    assert "def " in text


def test_train_val_split():
    train, val = train_val_split("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")
    with pytest.raises(ValueError, match="val_fraction must be in"):
        train_val_split("abc", 1.0)
