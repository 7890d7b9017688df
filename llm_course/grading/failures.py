"""Checks for the chapter 14 exercises (where LLMs fail).

The student writes, with the signatures of :mod:`llm_course.failures`:

- ``retrieval_prompt(keys, values, query_index, n_keys, n_values) -> (ids, target)``
  (one token ``k n_values + v`` per fact, the query marker, the key token asked about, as a 1-D
  long tensor; and the id of the answer's value token)
- ``accuracy_by_position(predictions, targets, positions, n_positions) -> (n_positions,) float``
  (NaN where a position has no example)
- ``expected_calibration_error(probs, correct, n_bins) -> float``
  (equal-width bins, ``floor(p * n_bins)`` clamped to the last bin; empty bins skipped)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). All are pure functions on small tensors: no model is trained while grading.
"""

from __future__ import annotations

import math
import random

import torch

from llm_course import failures
from llm_course.grading import call, expect_tensor, fail, forbid_reference, passed, seeded, short
from llm_course.grading.edges import edge


# --------------------------------------------------------------------------- retrieval_prompt
def _compare_prompt(fn, keys, values, query_index, n_keys, n_values, what: str = "") -> None:
    want_ids, want_target = failures.retrieval_prompt(keys, values, query_index, n_keys, n_values)
    got = call(fn, keys, values, query_index, n_keys, n_values)
    args = f"retrieval_prompt({short(keys, 50)}, {short(values, 50)}, {query_index}, n_keys={n_keys}, n_values={n_values}){what}"
    n_facts, P = n_keys * n_values, len(keys)
    if not isinstance(got, tuple) or len(got) != 2:
        fail(f"{args} should return a tuple (ids, target), got {type(got).__name__}: {short(got)}")
    ids, target = got
    ids = expect_tensor(fn, ids, "the token ids of the example")
    if ids.dtype != torch.long:
        fail(f"{args}: ids should be a torch.long tensor (token ids index an embedding), got {ids.dtype}")
    if ids.dim() != 1:
        fail(f"{args}: ids should be 1-D, got shape {tuple(ids.shape)}")
    if len(ids) != len(want_ids):
        hint = ""
        if len(ids) == 2 * P + 2:
            hint = ": each fact is ONE token, k * n_values + v, not a key token and a value token"
        elif len(ids) == P + 1:
            hint = ": is the query marker or the key asked about missing at the end?"
        elif len(ids) == P:
            hint = ": the facts are followed by the query marker and the key asked about"
        fail(f"{args}: ids should have {P} + 2 = {len(want_ids)} tokens, got {len(ids)}{hint}")
    if not torch.equal(ids, want_ids):
        i = int((ids != want_ids).nonzero()[0])
        got_i, hint = int(ids[i]), ""
        if i < P:
            k, v = keys[i], values[i]
            if got_i == k * n_keys + v and n_keys != n_values:
                hint = f": a fact is k * n_values + v = {k} * {n_values} + {v} (each key owns n_values ids), not k * n_keys + v"
            elif got_i == v * n_keys + k:
                hint = ": a fact is k * n_values + v with the key first, not v * n_keys + k"
            elif got_i == k + v:
                hint = ": k + v mixes up facts; the fact of key k and value v is k * n_values + v"
        elif i == P:
            hint = f": after the facts comes the query marker, the last id n_keys * n_values + n_keys + n_values = {int(want_ids[i])}"
        else:
            if got_i == keys[query_index]:
                hint = f": key tokens come after the {n_facts} fact tokens: the key asked about is n_keys * n_values + keys[query_index]"
            elif got_i == n_facts + n_keys + values[query_index]:
                hint = ": the last token is the key asked about; its value is the answer, not part of the prompt"
            else:
                hint = f": the last token should be the key token of keys[query_index] = keys[{query_index}]"
        fail(f"{args}: at index {i} expected token {int(want_ids[i])}, got {got_i}{hint}; "
             f"expected {short(want_ids.tolist())}, got {short(ids.tolist())}")  # fmt: skip
    if isinstance(target, torch.Tensor):
        if target.numel() != 1:
            fail(f"{args}: target should be one int, got a tensor of shape {tuple(target.shape)}")
        target = target.item()
    if not isinstance(target, int) or isinstance(target, bool):
        fail(f"{args}: target should be an int, got {type(target).__name__}: {short(target)}")
    if target != want_target:
        hint = ""
        if target == values[query_index]:
            hint = ": that is the value itself; the target is the id of its value token, n_keys * n_values + n_keys + value"
        elif target == n_facts + keys[query_index]:
            hint = ": that is the key token; the answer is the value stored with the key"
        elif target == n_facts + values[query_index]:
            hint = ": value tokens come after the fact tokens AND the n_keys key tokens"
        elif target == want_ids[query_index]:
            hint = ": that is the fact token; the answer is the value token alone"
        fail(f"{args}: target should be {want_target} (the value token of values[{query_index}] = {values[query_index]}), "
             f"got {target}{hint}")  # fmt: skip


def check_retrieval_prompt(fn, hidden: bool = False) -> None:
    """retrieval_prompt(keys, values, i, K, V) = ([k_j V + v_j ...] + [F + K + V, F + k_i], F + K + v_i), F = K V.

    Edges the exercise defines, all in the hidden test: one fact; the query on the first and on the last
    fact; one key or one value in the vocabulary (K = 1, V = 1: k V + v must not become k K + v or k + v);
    the largest key and value (ids up to the query marker K V + K + V); large vocabularies (ids in the
    hundreds of thousands); keys and values given as tuples; ids torch.long, target a Python int.
    """
    forbid_reference(fn, failures.retrieval_prompt, failures.make_retrieval_example, failures.make_retrieval_batch)
    if not hidden:
        _compare_prompt(fn, [3, 1, 2], [1, 0, 1], 1, 4, 2, " (the example above)")
        _compare_prompt(fn, [3, 1, 2], [1, 0, 1], 0, 4, 2, " (answer first)")
        _compare_prompt(fn, [0, 5], [2, 0], 1, 6, 3, " (6 keys, 3 values)")
        _compare_prompt(fn, [4], [7], 0, 5, 8, " (one fact)")
        passed(fn, "the worked example and 3 more small prompts are right")
        return
    rng = random.Random(140)
    cases = 0
    for n_pairs in [1, 2, 5, 16, 40]:
        for _ in range(4):
            n_keys, n_values = rng.choice([(64, 8), (50, 10), (100, 3), (16, 16)])
            n_here = min(n_pairs, n_keys)
            keys = rng.sample(range(n_keys), n_here)
            values = [rng.randrange(n_values) for _ in range(n_here)]
            _compare_prompt(fn, keys, values, rng.randrange(n_here), n_keys, n_values)
            cases += 1
    _compare_prompt(fn, [5, 6, 7, 8], [2, 2, 2, 2], 3, 9, 3, " (all values equal)")
    _compare_prompt(fn, (0, 1), (1, 0), 1, 2, 2, " (keys and values given as tuples)")
    edges = {
        "one value in the vocabulary": ([2, 0, 1], [0, 0, 0], 2, 3, 1),
        "one key in the vocabulary": ([0, 0], [3, 1], 1, 1, 5),
        "the largest key and value, queried last": ([6, 0, 6], [0, 4, 4], 2, 7, 5),
        "a large vocabulary (multi-digit ids)": ([999, 17, 500], [511, 3, 0], 0, 1000, 512),
    }
    for name, args in edges.items():
        with edge(name):
            _compare_prompt(fn, *args, f" ({name})")
    cases += len(edges)
    passed(fn, f"all {cases + 2} random and edge-case prompts (1 .. 40 facts, repeated values, tuples) match")


# --------------------------------------------------------------------------- accuracy_by_position
def _compare_accuracy(fn, predictions, targets, positions, n_positions, what: str = "") -> None:
    want = failures.accuracy_by_position(predictions, targets, positions, n_positions)
    got = expect_tensor(fn, call(fn, predictions, targets, positions, n_positions), "the accuracy at each position")
    args = (f"accuracy_by_position(predictions={short(predictions.tolist(), 40)}, targets={short(targets.tolist(), 40)}, "
            f"positions={short(positions.tolist(), 40)}, n_positions={n_positions}){what}")  # fmt: skip
    if tuple(got.shape) != (n_positions,):
        fail(f"{args}: the result should have shape ({n_positions},), one accuracy per position, got {tuple(got.shape)}")
    if not got.is_floating_point():
        fail(f"{args}: the result should be a float tensor (fractions between 0 and 1), got {got.dtype}: integer division?")
    empty = torch.isnan(want)
    if not torch.equal(torch.isnan(got), empty):
        p = int((torch.isnan(got) != empty).nonzero()[0])
        if empty[p]:
            fail(f"{args}: position {p} has no example, so its accuracy is undefined and should be NaN, got {got[p].item():.4g}")
        fail(f"{args}: position {p} has examples, so its accuracy should be {want[p].item():.4g}, got NaN")
    close = torch.isclose(got.double(), want, atol=1e-6) | empty
    if not bool(close.all()):
        p = int((~close).nonzero()[0])
        counts = torch.bincount(positions, minlength=n_positions)
        hint = ""
        n_right = int(((predictions == targets) & (positions == p)).sum())
        as_floats = int(((predictions.float() == targets.float()) & (positions == p)).sum())
        if as_floats != n_right and math.isclose(got[p].item(), as_floats / int(counts[p]), abs_tol=1e-6):
            hint = (": ids above 2**24 compared as float32 look equal to their neighbours; compare the integer "
                    "tensors directly, predictions == targets")
        elif math.isclose(got[p].item(), n_right / len(predictions), abs_tol=1e-6):
            hint = ": that is divided by all examples; divide by the examples at this position"
        elif math.isclose(got[p].item(), n_right, abs_tol=1e-6):
            hint = ": that is the number right; the accuracy is that divided by the number of examples there"
        elif math.isclose(got[p].item(), 1 - want[p].item(), abs_tol=1e-6):
            hint = ": that is the error rate (wrong / count), not the accuracy"
        fail(f"{args}: at position {p} ({int(counts[p])} examples, {n_right} right) expected accuracy "
             f"{want[p].item():.4g}, got {got[p].item():.4g}{hint}")  # fmt: skip


def check_accuracy_by_position(fn, hidden: bool = False) -> None:
    """accuracy_by_position = per-position mean of (predictions == targets), NaN where empty.

    Edges the exercise defines, all in the hidden test: a position with no example is NaN, the first
    and the last one too (bincount needs minlength); one example; one position; all right and all
    wrong; unsorted positions with unequal counts; large token ids (above 2**24, where float32 can no
    longer tell neighbouring ids apart: compare the ids as integers).
    """
    forbid_reference(fn, failures.accuracy_by_position, failures.retrieval_accuracy_by_position)
    t = torch.tensor
    if not hidden:
        _compare_accuracy(fn, t([5, 6, 7, 5]), t([5, 6, 0, 0]), t([0, 1, 1, 2]), 3, " (the example above)")
        _compare_accuracy(fn, t([1, 2, 3, 4, 5, 6]), t([1, 2, 3, 4, 5, 6]), t([0, 0, 1, 1, 2, 2]), 3, " (all right)")
        _compare_accuracy(fn, t([1, 1, 1, 1]), t([1, 2, 1, 2]), t([0, 0, 2, 2]), 3, " (position 1 has no example)")
        passed(fn, "the worked example, an all-correct case and an empty position are right")
        return
    g = seeded(141)
    cases = 0
    for n, n_positions, n_classes in [(1, 1, 2), (10, 3, 2), (100, 8, 4), (1000, 16, 3), (997, 20, 64), (50, 40, 2)]:
        predictions = torch.randint(0, n_classes, (n,), generator=g)
        targets = torch.randint(0, n_classes, (n,), generator=g)
        positions = torch.randint(0, n_positions, (n,), generator=g)
        _compare_accuracy(fn, predictions, targets, positions, n_positions)
        cases += 1
    # Unsorted positions with unequal counts, and a last position that is empty.
    _compare_accuracy(fn, t([3, 3, 3, 0, 0]), t([3, 0, 3, 0, 1]), t([2, 0, 2, 2, 0]), 4, " (unequal counts, last position empty)")
    _compare_accuracy(fn, t([0, 0]), t([1, 1]), t([1, 1]), 2, " (all wrong)")
    big = 2**24
    edges = {
        "the first and the last position empty": (t([1, 2, 2]), t([1, 2, 0]), t([1, 2, 1]), 4),
        "one example": (t([7]), t([7]), t([0]), 1),
        "large token ids": (t([big + 1, big + 3, 50_000, big]), t([big, big + 3, 50_000, big + 1]), t([0, 0, 1, 1]), 2),
    }
    for name, args in edges.items():
        with edge(name):
            _compare_accuracy(fn, *args, f" ({name})")
    cases += len(edges)
    passed(fn, f"all {cases + 2} random and edge cases (1 .. 1000 examples, unequal counts, empty positions) match")


# --------------------------------------------------------------------------- expected_calibration_error
def _compare_ece(fn, probs, correct, n_bins, what: str = "") -> None:
    want = failures.expected_calibration_error(probs, correct, n_bins)
    got = call(fn, probs, correct, n_bins)
    args = f"expected_calibration_error(probs={short([round(p, 4) for p in probs.tolist()], 50)}, correct={short(correct.tolist(), 40)}, n_bins={n_bins}){what}"
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            fail(f"{args} should return one number, got a tensor of shape {tuple(got.shape)}: did you forget to sum over the bins?")
        got = got.item()
    if not isinstance(got, (float, int)) or isinstance(got, bool):
        fail(f"{args} should return a float, got {type(got).__name__}: {short(got)}")
    if math.isnan(got):
        fail(f"{args} returned NaN: empty bins have no accuracy or confidence; leave them out of the sum")
    if not math.isclose(got, want, abs_tol=1e-6):
        hint = ""
        conf, acc, counts = failures.reliability_bins(probs, correct, n_bins)
        full = counts > 0
        gaps = (acc[full] - conf[full]).abs()
        kept = probs < 1.0
        signed = abs(float(correct.double().mean() - probs.double().mean()))
        if math.isclose(got, float(gaps.mean()), abs_tol=1e-6):
            hint = ": that is the plain mean of the bins' gaps; weight each bin by its share of the examples, n_b / N"
        elif math.isclose(got, float((counts[full] * gaps).sum()), abs_tol=1e-6):
            hint = ": that is weighted by the counts n_b; divide by the total N"
        elif not bool(kept.all()) and math.isclose(
            got, failures.expected_calibration_error(probs[kept], correct[kept], n_bins) * float(kept.double().mean()), abs_tol=1e-6
        ):
            hint = ": the examples with p = 1.0 are missing: floor(p * n_bins) = n_bins there, put them in the last bin"
        elif math.isclose(abs(got), signed, abs_tol=1e-6):
            hint = (": that is |accuracy - confidence| over all examples at once (which is also what the bins' gaps "
                    "add up to without an absolute value): take |acc_b - conf_b| inside each bin")
        else:
            hint = ": check the bins: bin b holds b / n_bins <= p < (b + 1) / n_bins"
        fail(f"{args}: expected ECE {want:.6g}, got {got:.6g}{hint}")


def check_expected_calibration_error(fn, hidden: bool = False) -> None:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over equal-width bins, empty bins skipped.

    Edges the exercise defines, all in the hidden test: a probability exactly on an inner bin edge goes
    to the bin *above* it (bin floor(p n_bins): bins are closed on the left, [b / n, (b + 1) / n));
    p = 0 goes to bin 0 and p = 1 to the last bin; empty bins are skipped; one bin; one example; bool
    or 0/1 int `correct`; float32 and float64 probabilities. The bin-edge cases use dyadic probabilities
    (0.25, 0.5, 0.75, ...), exact in every float type, so rounding cannot decide the bin.
    """
    forbid_reference(fn, failures.expected_calibration_error, failures.reliability_bins)
    t = torch.tensor
    if not hidden:
        _compare_ece(fn, t([0.9, 0.9, 0.6, 0.2]), t([True, False, True, True]), 2, " (the example above)")
        _compare_ece(fn, t([0.25, 0.75, 0.75, 0.75, 0.75]), t([False, True, True, True, False]), 4, " (a well calibrated bin)")
        _compare_ece(fn, t([1.0, 0.95, 0.95, 0.35]), t([False, False, False, True]), 10, " (confidently wrong, p = 1.0 included)")
        passed(fn, "the worked example, a calibrated bin and a confidently wrong model are right")
        return
    g = seeded(142)
    cases = 0
    for n, n_bins in [(1, 1), (10, 5), (200, 10), (1000, 15), (333, 7), (50, 20)]:
        probs = torch.rand(n, generator=g)
        correct = torch.rand(n, generator=g) < probs ** 2  # an over-confident model
        _compare_ece(fn, probs, correct, n_bins)
        cases += 1
    _compare_ece(fn, t([1.0, 1.0, 0.5, 0.0]), t([True, False, True, False]), 4, " (p = 1.0 and p = 0.0 at the edges)")
    _compare_ece(fn, t([0.1, 0.3, 0.5, 0.7, 0.9]), t([False, False, True, True, True]), 5, " (one example per bin)")
    _compare_ece(fn, t([0.2, 0.4], dtype=torch.float64), t([0, 1]), 2, " (float64 probabilities, 0/1 ints for correct)")
    # Each probability on an edge shares its bin with 0.3 (below the edge 0.5) or 0.625 (above it),
    # so the bin it lands in changes the ECE.
    edges = {
        "p = 0.5 on the edge between 2 bins": (t([0.5, 0.5, 0.25, 0.75]), t([True, True, False, False]), 2),
        "p = 0.25, 0.5, 0.75 on the edges of 4 bins": (
            t([0.25, 0.3, 0.5, 0.625, 0.75, 0.875, 0.25]), t([True, False, True, False, False, True, True]), 4),
        "every inner edge of 8 bins, float64": (
            t([b / 8 for b in range(1, 8)] + [0.1, 0.3, 0.45, 0.55, 0.7, 0.8, 0.95], dtype=torch.float64),
            t([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0]), 8),
        "p = 0 and p = 1 next to the edges": (t([0.0, 0.0, 0.25, 1.0, 1.0, 0.75]), t([False, True, True, True, False, True]), 4),
    }
    for name, (probs, correct, n_bins) in edges.items():
        with edge(name):
            _compare_ece(fn, probs, correct, n_bins, f" ({name})")
    cases += len(edges)
    passed(fn, f"all {cases + 3} random and edge cases (1 .. 1000 examples, 1 .. 20 bins, p = 0 and 1) match")
