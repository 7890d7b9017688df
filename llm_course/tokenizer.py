"""A byte-level BPE tokenizer with special tokens, a chunk cache, save/load and tiktoken export.

Builds on the pure functions of :mod:`llm_course.bpe` (train, encode a chunk,
decode). What this class adds:

- **special tokens** (``<|endoftext|>``, chat markers, ...) with ids after the
  merges, handled like tiktoken: text that contains a special token's string raises
  an error unless that token is allowed, and allowed ones become their single id;
- a **cache** of encoded chunks, so that a word seen before costs one dict lookup;
- **save / load** as readable JSON (the merges in order, the pattern, the special
  tokens, and each token's bytes shown as text for people to read);
- a **streaming encoder**, :meth:`encode_iterable`, that encodes a file piece by piece
  with bounded memory and the ids of :meth:`encode` on the whole text;
- **export** as tiktoken's ``mergeable_ranks``, so ``tiktoken.Encoding`` built from
  it produces exactly our ids (the tests check this on the corpus and unseen text).

Reference: OpenAI's GPT-2 ``encoder.py`` and tiktoken; Karpathy's minbpe.
Left out: the GPT-2 byte-to-unicode table (only needed to store merges as text).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Literal

import regex

from llm_course import bpe

FORMAT_NAME = "llm_course-bpe"
FORMAT_VERSION = 1

#: Where a stream of text may be cut without changing its chunks: before a space that follows a
#: character that is not whitespace. No chunk of GPT-2's pattern (nor of tiktoken's cl100k) holds
#: such a pair, and the chunks before the cut never look past that space.
_STREAM_CUT = regex.compile(r"(?<=\S)(?= )")


class Tokenizer:
    """Byte-level BPE. Train with :meth:`train` or build from merges; then encode and decode.

    >>> tok = Tokenizer.train("hello hello world", vocab_size=260)
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
    """

    def __init__(
        self,
        merges: dict[bpe.Pair, int] | None = None,
        special_tokens: dict[str, int] | None = None,
        pattern: str = bpe.GPT2_SPLIT_PATTERN,
        cache_size: int = 1 << 16,
    ):
        self.pattern = pattern
        self._split = regex.compile(pattern)
        self.merges: dict[bpe.Pair, int] = dict(merges or {})
        self.vocab: dict[int, bytes] = bpe.build_vocab(self.merges)
        self._ranks = bpe.pair_ranks(self.vocab)
        self.special_tokens: dict[str, int] = {}
        self._special_splits: dict[frozenset[str], regex.Pattern] = {}
        self._cache: dict[bytes, list[int]] = {}
        self.cache_size = cache_size
        if special_tokens:
            self.add_special_tokens(special_tokens)

    # ---------------------------------------------------------------- building
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        pattern: str = bpe.GPT2_SPLIT_PATTERN,
    ) -> Tokenizer:
        """Learn ``vocab_size - 256`` merges from `text`; special tokens get the ids after them.

        The text is cut at the special tokens before training, so a corpus of documents
        joined by ``<|endoftext|>`` learns no merge across the separator.
        """
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
        specials = list(special_tokens)
        tok = cls(bpe.train_bpe(text, vocab_size, pattern, specials), pattern=pattern)
        if specials:
            first = len(tok.vocab)
            tok.add_special_tokens({s: first + i for i, s in enumerate(specials)})
        return tok

    def add_special_tokens(self, special_tokens: dict[str, int]) -> None:
        """Register special tokens ``{text: id}``; ids must not collide with ordinary tokens."""
        for text, i in special_tokens.items():
            if not text:
                raise ValueError("a special token cannot be the empty string")
            if i in self.vocab or i in self.special_tokens.values():
                raise ValueError(f"special token {text!r} wants id {i}, which is already taken")
            self.special_tokens[text] = i
        self._special_splits.clear()

    def _special_split(self, allowed: frozenset[str]) -> regex.Pattern:
        """A pattern that splits text at the allowed special tokens (and only those), kept per set."""
        pattern = self._special_splits.get(allowed)
        if pattern is None:
            # Longest first, so that "<|a|>b" cannot be cut short by a special token "<|a|>".
            alternatives = sorted(allowed, key=len, reverse=True)
            pattern = regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")
            self._special_splits[allowed] = pattern
        return pattern

    @property
    def n_vocab(self) -> int:
        """Number of ids: byte tokens, merges and special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    # ---------------------------------------------------------------- encoding
    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            ids = bpe.encode_chunk(list(chunk), self._ranks)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        for chunk in self._split.findall(text):
            ids.extend(self._encode_chunk(chunk.encode("utf-8")))
        return ids

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Encode text. Special tokens follow tiktoken's rules.

        `allowed_special` lists the special tokens that become their id ("all" for
        every one). Any *disallowed* special token found in the text raises a
        `ValueError`; by default every special token not allowed is disallowed. Pass
        ``disallowed_special=()`` to encode such text as ordinary text instead.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)}, which are not special tokens of this tokenizer")
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        for special in disallowed:
            if special in text:
                raise ValueError(
                    f"text contains the special token {special!r}, which is not allowed. Pass "
                    f"allowed_special={{{special!r}}} to encode it as id {self.special_tokens.get(special)}, "
                    "or disallowed_special=() to encode it as ordinary text."
                )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(self._special_split(frozenset(allowed)).split(text)):
            if i % 2 == 1:  # odd parts are the allowed special tokens found
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_iterable(
        self,
        texts: Iterable[str],
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
        buffer_chars: int = 1 << 16,
    ) -> Iterator[int]:
        """Encode a stream of text (the lines of an open file, say), yielding ids as they are ready.

        The ids are exactly those of ``encode("".join(texts), ...)``. Pieces are gathered
        until they hold `buffer_chars` characters, then encoded up to the last safe cut
        (before a space that follows a non-space character), so that no chunk and no
        special token is split between two batches; the rest waits for the next pieces.
        Memory is bounded by `buffer_chars` plus the longest stretch of text without a
        cut, not by the size of the stream. The cut rule holds for GPT-2's pattern and
        tiktoken's cl100k (the tests check both); a custom pattern whose chunks may contain
        a non-space character followed by a space would need another rule.
        """
        if isinstance(texts, str):
            raise TypeError("encode_iterable expects an iterable of strings (e.g. an open file), got a str: use encode")
        if isinstance(buffer_chars, bool) or not isinstance(buffer_chars, int) or buffer_chars < 1:
            raise ValueError(f"buffer_chars must be an int >= 1, got {buffer_chars!r}")
        for special in self.special_tokens:
            if any(c.isspace() for c in special):
                raise ValueError(
                    f"special token {special!r} contains whitespace: encode_iterable cuts the stream before "
                    "spaces and could split it; use encode on the whole text"
                )
        pending: list[str] = []  # pieces not encoded yet
        size = 0
        for piece in texts:
            if not isinstance(piece, str):
                raise TypeError(f"encode_iterable expects strings, got a {type(piece).__name__}")
            pending.append(piece)
            size += len(piece)
            if size < buffer_chars:
                continue
            text = "".join(pending)
            cut = 0
            for match in _STREAM_CUT.finditer(text):
                cut = match.start()  # the last safe cut
            if cut > 0:
                yield from self.encode(text[:cut], allowed_special, disallowed_special)
            pending, size = [text[cut:]], len(text) - cut
        yield from self.encode("".join(pending), allowed_special, disallowed_special)

    # ---------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of a sequence of ids (special tokens as their UTF-8 text)."""
        inverse_special = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        parts = []
        for i in ids:
            token = self.vocab.get(i)
            if token is None:
                token = inverse_special.get(i)
                if token is None:
                    raise ValueError(f"token id {i!r} is not in the vocabulary (valid ids: 0..{self.n_vocab - 1})")
            parts.append(token)
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text. Bytes that are not valid UTF-8 become U+FFFD, never an exception."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """A printable form of one token (invalid UTF-8 shown as U+FFFD), for tables and plots."""
        return self.decode([i])

    # ---------------------------------------------------------------- export
    def mergeable_ranks(self) -> dict[bytes, int]:
        """tiktoken's ``{token_bytes: rank}`` table for the ordinary tokens."""
        return bpe.mergeable_ranks(self.merges)

    def to_tiktoken(self, name: str = "llm_course"):
        """A ``tiktoken.Encoding`` with the same pattern, ranks and special tokens (needs tiktoken)."""
        try:
            import tiktoken
        except ImportError as err:  # tiktoken is a test-only dependency
            raise ImportError("to_tiktoken needs the tiktoken package: pip install tiktoken") from err
        return tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=self.mergeable_ranks(),
            special_tokens=dict(self.special_tokens),
        )

    # ---------------------------------------------------------------- save / load
    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON. Merges are stored in order as ``[left, right]`` ids."""
        path = Path(path)
        ordered = sorted(self.merges.items(), key=lambda item: item[1])
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [[a, b] for (a, b), _ in ordered],
            # For people reading the file; ignored by load().
            "tokens": {str(i): self.token_str(i) for _, i in ordered},
        }
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`; errors name the file and what is wrong."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"tokenizer file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
            raise ValueError(f"{str(path)!r} is not an {FORMAT_NAME} file (no 'format': {FORMAT_NAME!r} field)")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{str(path)!r} has format version {payload.get('version')}, expected {FORMAT_VERSION}")
        merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(payload["merges"])}
        return cls(merges, special_tokens=payload.get("special_tokens") or {}, pattern=payload["pattern"])

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, merges={len(self.merges)}, special_tokens={len(self.special_tokens)})"
