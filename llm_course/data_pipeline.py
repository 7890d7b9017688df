"""A pretraining-data pipeline on the course's own text, and what it does to a small model (chapter 06, data).

Implements
- `course_documents` (the `pydoc_data.topics` entries, one document each) and `stdlib_documents`
  (a fixed subset of the standard library's top-level .py files): two local sources;
- `plant_near_duplicates` and `plant_junk`: what a web crawl has and these sources lack,
  added on purpose (edited copies of documents; spam, keyword lists, symbol noise, fragments);
- `run_pipeline`: exact deduplication, then MinHash + LSH near-deduplication, then the quality
  rules of `llm_course.data_quality`, with the documents each stage removed;
- `FilterRun` / `load_filter_run`: a small byte-level `Transformer` trained with the course's
  `Trainer` for the same number of tokens on the unfiltered and on the filtered training
  documents, validated on the same held-out documents; cached (`llm_course.cache`);
  `held_out_loss` scores a model on any held-out documents.

Left out: everything that needs a real crawl (HTML extraction, language identification, URL
filters) and model-based quality classifiers.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_course.cache import cached_entry
from llm_course.checkpoints import load_model, save_model
from llm_course.data_quality import CODE_RULES, GOPHER_RULES, apply_rules
from llm_course.dedup import exact_duplicates, minhash_signatures, near_duplicates, shingle_hashes
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, TransformerConfig

SEPARATOR = "\n\n"


def course_documents() -> list[str]:
    """The `pydoc_data.topics` entries (the course corpus), one document each, sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


def stdlib_documents(n_files: int = 60, min_bytes: int = 2_000, max_bytes: int = 30_000) -> list[str]:
    """`n_files` top-level standard-library modules (sorted by name, sizes in [min_bytes, max_bytes]), as text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")):
        if min_bytes <= path.stat().st_size <= max_bytes:
            try:
                docs.append(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, OSError):
                continue
        if len(docs) == n_files:
            break
    if not docs:
        raise FileNotFoundError(f"no standard-library .py files of {min_bytes} .. {max_bytes} bytes under {root}")
    return docs


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """A copy of `text` with about `rate` of its words replaced by a word from elsewhere in it or dropped."""
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 2:
            continue  # dropped
        out.append(rng.choice(words) if r < rate else w)
    return " ".join(out)


def plant_near_duplicates(docs: Sequence[str], n_docs: int, copies: int, rate: float,
                          seed: int = 0) -> tuple[list[str], list[int]]:  # fmt: skip
    """(copies, sources): `copies` edited copies (`edit_words` at `rate`) of each of `n_docs` documents
    drawn from `docs`, and for each copy the index in `docs` of the document it copies."""
    if not 0 < n_docs <= len(docs):
        raise ValueError(f"n_docs must be in 1 .. {len(docs)} (the documents given), got {n_docs}")
    rng = random.Random(seed)
    chosen = rng.sample(range(len(docs)), n_docs)
    sources = [i for i in chosen for _ in range(copies)]
    return [edit_words(docs[i], rate, rng) for i in sources], sources


def plant_junk(n: int, seed: int = 0) -> list[str]:
    """`n` documents of the kinds quality filters exist for: repeated boilerplate, keyword lists,
    symbol noise, and fragments too short to teach anything."""
    rng = random.Random(seed)
    vocabulary = "python code free best download online tutorial cheap fast learn easy guide top".split()
    kinds = [
        lambda: "\n".join(["Click here to subscribe to our newsletter!"] * rng.randint(8, 30) + ["Thanks for reading."]),
        lambda: " ".join(rng.choice(vocabulary) for _ in range(rng.randint(60, 300))),
        lambda: "\n".join("#" * rng.randint(5, 40) + " " + rng.choice(vocabulary) + " ..." for _ in range(rng.randint(10, 40))),
        lambda: " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 30))),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


def run_pipeline(docs: Sequence[str], kinds: Sequence[str], threshold: float = 0.7, num_perm: int = 128,
                 bands: int = 16, rows: int = 8, shingle: int = 5, seed: int = 0) -> dict:  # fmt: skip
    """Exact dedup, near dedup, quality rules (`GOPHER_RULES` for kind "prose", `CODE_RULES` for "code").

    Returns {"stage": [...], "reason": [...], "near_pairs": [...], "duplicate_of": [...]}, per
    document the stage that removed it ("exact", "near", "quality" or None) and why.
    """
    if len(docs) != len(kinds):
        raise ValueError(f"{len(docs)} documents but {len(kinds)} kinds")
    unknown = set(kinds) - {"prose", "code"}
    if unknown:
        raise ValueError(f"kinds must be 'prose' or 'code', got {sorted(unknown)}")
    stage: list[str | None] = [None] * len(docs)
    reason: list[str | None] = [None] * len(docs)
    duplicate_of = exact_duplicates(docs)
    for i, first in enumerate(duplicate_of):
        if first is not None:
            stage[i], reason[i] = "exact", f"same text as document {first}"
    alive = [i for i in range(len(docs)) if stage[i] is None]
    hashes = [shingle_hashes(docs[i], shingle) for i in alive]
    has_text = [n for n, h in enumerate(hashes) if len(h)]
    sig = minhash_signatures([hashes[n] for n in has_text], num_perm, seed)  # (N, k)
    pairs, cluster = near_duplicates(sig, threshold, bands, rows)
    index = [alive[n] for n in has_text]  # row of sig -> document
    near_pairs = [(index[i], index[j], s) for i, j, s in pairs]
    for row, root in enumerate(cluster):
        if root != row:
            stage[index[row]], reason[index[row]] = "near", f"near-duplicate of document {index[root]}"
    for i, kind in enumerate(kinds):
        if stage[i] is None:
            broken = apply_rules([docs[i]], GOPHER_RULES if kind == "prose" else CODE_RULES)[0]
            if broken is not None:
                stage[i], reason[i] = "quality", broken
    return {"stage": stage, "reason": reason, "near_pairs": near_pairs, "duplicate_of": duplicate_of}


# ---------------------------------------------------------------------------------------
# Training on filtered and unfiltered data (the course's Trainer), cached
# ---------------------------------------------------------------------------------------


def byte_tokens(docs: Sequence[str]) -> torch.Tensor:
    """(n,) long: the UTF-8 bytes of the documents joined by blank lines (a 256-token vocabulary)."""
    return torch.tensor(list(SEPARATOR.join(docs).encode("utf-8")), dtype=torch.long)


@dataclass(frozen=True)
class FilterRun:
    """One small model trained on a list of documents: its shape and its token budget."""

    d_model: int = 48  # width
    n_layers: int = 2  # blocks
    n_heads: int = 4  # attention heads
    seq_len: int = 64  # context and training window
    batch_size: int = 32  # windows per step
    steps: int = 100  # optimizer steps: the token budget is steps * batch_size * seq_len
    lr: float = 3e-3  # peak learning rate
    seed: int = 0  # initialization and data order

    def model_config(self) -> TransformerConfig:
        return TransformerConfig(vocab_size=256, context_length=self.seq_len, d_model=self.d_model,
                                 n_layers=self.n_layers, n_heads=self.n_heads)  # fmt: skip

    def train_config(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, seq_len=self.seq_len, max_steps=self.steps, lr=self.lr,
                           warmup_steps=max(1, self.steps // 10), eval_interval=max(1, self.steps // 3),
                           eval_batches=4, seed=self.seed)  # fmt: skip

    def name(self) -> str:
        return f"L{self.n_layers}-d{self.d_model}-T{self.seq_len}-s{self.steps}-seed{self.seed}"


def train_filter_run(run: FilterRun, train_docs: Sequence[str], val_docs: Sequence[str]) -> tuple[Transformer, dict]:
    """Train `run` on the bytes of `train_docs`; validate on `val_docs`. Returns (model, info)."""
    start = time.perf_counter()
    model = Transformer(run.model_config(), generator=torch.Generator().manual_seed(run.seed))
    train_tokens, val_tokens = byte_tokens(train_docs), byte_tokens(val_docs)
    trainer = Trainer(model, run.train_config(), train_tokens, val_tokens, log=None)
    trainer.train()
    info = {"run": dataclasses.asdict(run), "train_tokens": len(train_tokens), "val_history": trainer.val_history,
            "loss": trainer.history["loss"], "seconds": time.perf_counter() - start,
            "epochs": run.steps * run.batch_size * run.seq_len / len(train_tokens)}  # fmt: skip
    return model.eval(), info


@torch.no_grad()
def held_out_loss(model: Transformer, docs: Sequence[str], seq_len: int, n_windows: int = 128) -> float:
    """Mean next-token cross-entropy (nats per byte) of `model` on the first `n_windows` windows of `docs`' bytes."""
    tokens = byte_tokens(docs)
    n = min(n_windows, (len(tokens) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"the held-out documents have {len(tokens)} bytes, fewer than seq_len + 1 = {seq_len + 1}")
    index = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)  # (n, T + 1)
    windows = tokens[index]
    logits = model.eval()(windows[:, :-1])  # (n, T, 256)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()


def load_filter_run(run: FilterRun, label: str, train_docs: Sequence[str], val_docs: Sequence[str],
                    cache: str | Path | None = None) -> tuple[Transformer, dict]:  # fmt: skip
    """(model, info) of `run` on these documents: trained once, then read from the cache (kind
    "pretraining_data"), keyed by the run, a digest of the documents, and the code."""
    settings = {"run": run, "train": SEPARATOR.join(train_docs).encode("utf-8"),
                "val": SEPARATOR.join(val_docs).encode("utf-8")}  # fmt: skip

    def build(folder: Path) -> None:
        model, info = train_filter_run(run, train_docs, val_docs)
        save_model(model, folder)
        (folder / "info.json").write_text(json.dumps(info))

    folder = cached_entry("pretraining_data", f"{label}-{run.name()}", settings, "llm_course.data_pipeline", build, cache)
    return load_model(folder).eval(), json.loads((folder / "info.json").read_text())
