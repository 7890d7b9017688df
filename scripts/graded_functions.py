"""The graded functions of the course and the reference code the student edition must not show.

Each graded notebook (`solutions/<chapter>/<chapter>.ipynb`) asks students to write functions; the
grade id of a solution cell is the function's name. `REFERENCES` maps each of those names to the
`llm_course` objects whose code *is* the answer (the first is the one the check in
`llm_course/grading/<chapter>.py` compares with; the others compute the same thing under another
name). The student edition of the book (scripts/book_editions.py) shows their signature and
docstring only, and scripts/check_book.py searches the built student edition for their bodies and
for the bodies of the solution cells.

`EXERCISES` holds what the book's `{graded-exercise}` block says besides the notebook's own
statement: an estimated time in minutes, a difficulty from 1 to 3 (as ARENA grades them) and a hint.

Bodies are compared as *normalised lines* (stripped, inner whitespace collapsed, comment-only and
short lines dropped): a text leaks a body when it holds a run of `WINDOW` consecutive distinctive
lines of it, in order, whatever the markup (HTML spans, JSON strings of a notebook) around them.
"""

from __future__ import annotations

import ast
import functools
import html
import importlib
import inspect
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"

REFERENCES: dict[str, tuple[str, ...]] = {
    # 01_neural_networks
    "linear_forward": ("llm_course.nn_basics:linear_forward",),
    "linear_backward": ("llm_course.nn_basics:linear_backward",),
    "sgd_step": ("llm_course.nn_basics:sgd_step",),
    "rnn_gradient_norms": ("llm_course.nn_basics:rnn_gradient_norms",
                           "llm_course.nn_basics:hidden_state_gradients"),
    # 02_tokenization
    "get_pair_counts": ("llm_course.bpe:get_pair_counts",),
    "merge": ("llm_course.bpe:merge",),
    "train": ("llm_course.bpe:train_bpe",),
    "encode": ("llm_course.bpe:encode_chunk", "llm_course.bpe:encode"),
    "decode": ("llm_course.bpe:decode", "llm_course.bpe:build_vocab"),
    # 03_embeddings
    "one_hot_embedding": ("llm_course.embeddings:one_hot_embedding",),
    "sinusoidal_encoding": ("llm_course.embeddings:sinusoidal_encoding",),
    "sinusoidal_shift_matrix": ("llm_course.embeddings:sinusoidal_shift_matrix",),
    "apply_rope": ("llm_course.rope:apply_rope", "llm_course.rope:rotate_half"),
    # 04_attention
    "causal_mask": ("llm_course.attention:causal_mask",),
    "scaled_dot_product_attention": ("llm_course.attention:scaled_dot_product_attention",
                                     "llm_course.attention:attention_weights"),
    "multi_head_attention": ("llm_course.attention:multi_head_attention",),
    # 05_transformer
    "layer_norm": ("llm_course.norms:layer_norm",),
    "rms_norm": ("llm_course.norms:rms_norm",),
    "block_forward": ("llm_course.transformer:Block.forward",),
    "count_parameters": ("llm_course.transformer:count_parameters",
                         "llm_course.transformer:parameter_breakdown"),
    # 06_pretraining
    "cross_entropy": ("llm_course.losses:cross_entropy",),
    "adamw_step": ("llm_course.optim:adamw_step",),
    "warmup_cosine": ("llm_course.optim:warmup_cosine",),
    "clip_grad_norm": ("llm_course.optim:clip_grad_norm",),
    "is_spike": ("llm_course.trainer:is_spike",),
    # 07_scaling_laws
    "flops_per_token": ("llm_course.scaling:kaplan_flops_per_token",),
    "fit_power_law": ("llm_course.scaling:fit_power_law",),
    "chinchilla_optimal": ("llm_course.scaling:chinchilla_optimal",),
    # 08_generation
    "apply_temperature": ("llm_course.sampling:apply_temperature",),
    "top_k_filter": ("llm_course.sampling:top_k_filter",),
    "top_p_filter": ("llm_course.sampling:top_p_filter",),
    "sample_next": ("llm_course.sampling:sample_next",),
    "perplexity": ("llm_course.generation:perplexity",),
    # 09_efficient_inference
    "cached_attention": ("llm_course.kv_cache:cached_attention",),
    "verify_draft": ("llm_course.speculative:verify_draft",),
    "quantize_groupwise": ("llm_course.quantization:quantize_groupwise",),
    "dequantize_groupwise": ("llm_course.quantization:dequantize_groupwise",),
    # 10_mixture_of_experts
    "top_k_routing": ("llm_course.moe:top_k_routing",),
    "load_balancing_loss": ("llm_course.moe:load_balancing_loss",),
    "moe_forward": ("llm_course.moe:MoE.forward",),
    # 11_fine_tuning
    "masked_sft_loss": ("llm_course.sft:masked_sft_loss",),
    "lora_forward": ("llm_course.lora:lora_forward",),
    "merge_weight": ("llm_course.lora:merge_weight",),
    # 12_alignment
    "pairwise_loss": ("llm_course.reward_model:pairwise_loss",),
    "gae": ("llm_course.ppo:gae",),
    "ppo_clip_loss": ("llm_course.ppo:ppo_clip_loss",),
    "dpo_loss": ("llm_course.dpo:dpo_loss",),
    # 13_training_at_scale
    "average_gradients": ("llm_course.distributed:average_gradients",),
    "data_parallel_gradients": ("llm_course.distributed:data_parallel_gradients",),
    "memory_per_device": ("llm_course.distributed:memory_per_device",),
    # 14_failures
    "retrieval_prompt": ("llm_course.failures:retrieval_prompt",),
    "accuracy_by_position": ("llm_course.failures:accuracy_by_position",),
    "expected_calibration_error": ("llm_course.failures:expected_calibration_error",),
    # 06_pretraining_data
    "minhash_signature": ("llm_course.dedup:minhash_signature",),
    "lsh_candidate_pairs": ("llm_course.dedup:lsh_candidate_pairs",),
    # 15_in_context_learning
    "induction_score": ("llm_course.icl:induction_score",),
    "score_answers": ("llm_course.icl:score_answers",),
}

WINDOW = 3  # consecutive distinctive lines that make a leak (all of them for shorter bodies)
MIN_LINE = 12  # characters: shorter normalised lines (`return out`, `i += 1`) are not distinctive


# --------------------------------------------------------------------------- graded ids
@functools.lru_cache(maxsize=None)
def graded_ids() -> dict[str, str]:
    """{grade id: chapter} of every solution cell of every graded notebook, in course order."""
    found: dict[str, str] = {}
    for notebook in sorted(SOLUTIONS.glob("*/*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("solution") and meta.get("grade_id") and cell["cell_type"] == "code":
                found[meta["grade_id"]] = notebook.parent.name
    return found


def solution_cells() -> dict[str, str]:
    """{grade id: the code between `### BEGIN SOLUTION` and `### END SOLUTION`}."""
    found: dict[str, str] = {}
    for notebook in sorted(SOLUTIONS.glob("*/*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("solution") and meta.get("grade_id") and cell["cell_type"] == "code":
                source = "".join(cell["source"])
                blocks = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source, re.S)
                found[meta["grade_id"]] = "\n".join(blocks)
    return found


# --------------------------------------------------------------------------- references
def resolve(dotted: str):
    """`"llm_course.bpe:merge"` or `"llm_course.moe:MoE.forward"` -> the object."""
    module_name, _, qualname = dotted.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def reference_source(dotted: str) -> str:
    """The dedented source of a reference (what a `literalinclude :pyobject:` shows)."""
    return textwrap.dedent(inspect.getsource(resolve(dotted)))


def split_source(source: str) -> tuple[str, str]:
    """(head, body) of a function's source: the head is its decorators, signature and docstring."""
    tree = ast.parse(source)
    fn = tree.body[0]
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ValueError(f"not a function: {source.splitlines()[0]!r}")
    first = fn.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
        and isinstance(first.value.value, str)
    if has_doc and len(fn.body) == 1:
        return source, ""
    start = fn.body[1 if has_doc else 0].lineno - 1
    lines = source.splitlines(keepends=True)
    return "".join(lines[:start]), "".join(lines[start:])


HIDDEN_BODY = "the body is the exercise: not shown in this edition"


def stub(dotted: str, note: str = HIDDEN_BODY) -> str:
    """Signature and docstring of a reference, and `...  # note` where its body was."""
    head, body = split_source(reference_source(dotted))
    indent = re.match(r"\s*", body).group(0) if body.strip() else "    "
    return head.rstrip("\n") + f"\n{indent}...  # {note}\n"


def check_name(grade_id: str) -> str:
    """The check that grades `grade_id`: `llm_course.grading.<module>:check_<grade_id>`."""
    chapter = graded_ids()[grade_id]
    module = "llm_course.grading." + chapter.split("_", 1)[1]
    return f"{module}:check_{grade_id}"


# --------------------------------------------------------------------------- leak detection
def normalise(text: str) -> list[str]:
    """The distinctive lines of a text: stripped, whitespace collapsed, no comment-only lines."""
    out = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if len(line) >= MIN_LINE and not line.startswith("#"):
            out.append(line)
    return out


@dataclass(frozen=True)
class Body:
    name: str  # "merge (llm_course.bpe:merge)" or "merge (solution cell)"
    lines: tuple[str, ...]

    def windows(self) -> list[tuple[str, ...]]:
        k = min(WINDOW, len(self.lines))
        return [self.lines[i:i + k] for i in range(len(self.lines) - k + 1)] if k else []


@functools.lru_cache(maxsize=None)
def graded_bodies() -> tuple[Body, ...]:
    """Every body the student edition must not contain: the references' and the solution cells'."""
    bodies = []
    for grade_id, references in REFERENCES.items():
        for dotted in references:
            lines = normalise(split_source(reference_source(dotted))[1])
            if lines:
                bodies.append(Body(f"{grade_id} ({dotted})", tuple(lines)))
    for grade_id, code in solution_cells().items():
        lines = normalise(code)
        if lines:
            bodies.append(Body(f"{grade_id} (solution cell)", tuple(lines)))
    return tuple(bodies)


def text_of_file(path: Path) -> str:
    """What a reader could see in a built file: HTML without tags, a notebook's strings."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        parts = []
        for cell in nb.get("cells", []):
            parts.append("".join(cell.get("source", [])))
            for output in cell.get("outputs", []):
                parts.append("".join(output.get("text", [])))
                for value in output.get("data", {}).values():
                    parts.append("".join(value) if isinstance(value, list) else str(value))
        return "\n".join(parts)
    if path.suffix in (".html", ".htm"):
        raw = re.sub(r"<[^>]+>", "", raw)
        return html.unescape(raw)
    return raw


def find_leaks(text: str, bodies: tuple[Body, ...] | None = None) -> list[str]:
    """Names of the bodies whose run of WINDOW consecutive distinctive lines appears in `text`."""
    bodies = graded_bodies() if bodies is None else bodies
    seen = normalise(text)
    joined = "\n" + "\n".join(seen) + "\n"
    leaks = []
    for body in bodies:
        if any("\n" + "\n".join(window) + "\n" in joined for window in body.windows()):
            leaks.append(body.name)
    return leaks


# --------------------------------------------------------------------------- the book's exercise
def notebook_cells(grade_id: str) -> tuple[str, str]:
    """(statement, solution cell) of `grade_id` in its solutions/ notebook: the statement is the
    Markdown cell just before the solution cell."""
    chapter = graded_ids()[grade_id]
    cells = json.loads((SOLUTIONS / chapter / f"{chapter}.ipynb").read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            before = cells[index - 1] if index and cells[index - 1]["cell_type"] == "markdown" else None
            return ("".join(before["source"]) if before else ""), "".join(cell["source"])
    raise KeyError(grade_id)


def notebook_stub(solution_cell: str) -> str:
    """The solution cell as the student gets it: the solution region replaced by `...`."""
    return re.sub(r"( *)### BEGIN SOLUTION\n.*?### END SOLUTION\n?", r"\1...  # your code\n",
                  solution_cell, flags=re.S).rstrip() + "\n"


def _statement(markdown: str) -> tuple[str, str]:
    """(title, body) of a notebook's statement cell, made fit to sit inside a directive: the first
    heading is the title, later headings become bold lines, relative links become their text."""
    lines = markdown.strip().splitlines()
    title = ""
    if lines and lines[0].startswith("#"):
        title = re.sub(r"^#+\s*(\d+\.\s*)?", "", lines.pop(0)).strip()
    body = "\n".join(f"**{m.group(1)}**" if (m := re.match(r"^#+\s+(.*)", line)) else line
                     for line in lines)
    body = re.sub(r"\[([^\]]+)\]\((?!https?:)[^)]*\)", r"\1", body)  # links into the repository
    # One-line `$$ ... $$` inside a paragraph or a list (Jupyter renders it, MyST does not).
    body = re.sub(r"\$\$([^$\n]+)\$\$", r"$\\displaystyle \1$", body)
    return title, body.strip()


def _check_doc(grade_id: str) -> str:
    """What the tests check: the docstring of the check, as Markdown."""
    module, _, name = check_name(grade_id).partition(":")
    doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
    return re.sub(r"``([^`]+)``", r"`\1`", doc)


def exercise_myst(grade_id: str, page_dir: Path, edition: str) -> str:
    """The MyST text of the book's exercise for `grade_id` (with its solution in the self-study
    edition). `page_dir` is the folder of the page, for the relative paths."""
    if grade_id not in REFERENCES:
        raise KeyError(f"{grade_id!r} is not a graded function (see scripts/graded_functions.py)")
    chapter = graded_ids()[grade_id]
    statement, cell = notebook_cells(grade_id)
    title, body = _statement(statement)
    minutes, difficulty, hint = EXERCISES[grade_id]
    primary = REFERENCES[grade_id][0]
    same_name = primary.rpartition(".")[2].rpartition(":")[2] == grade_id
    note = HIDDEN_BODY if edition == "student" else "your code (the reference is in the solution below)"
    signature = stub(primary, note) if same_name else notebook_stub(cell)
    notebook = os.path.relpath(ROOT / "exercises" / chapter / f"{chapter}.ipynb", page_dir)
    stars = "★" * difficulty + "☆" * (3 - difficulty)
    label = f"ex-{grade_id.replace('_', '-')}"
    tests = _check_doc(grade_id).replace("\n", "\n> ")
    text = f"""\
`````{{exercise}} {title or f'Write `{grade_id}`'}
:label: {label}

**About {minutes} min · difficulty {stars}** · graded: `{grade_id}` in the chapter's notebook
{{download}}`exercises/{chapter}.ipynb <{notebook}>`

{body}

````python
{signature.rstrip()}
````

**The tests.** The notebook's visible test runs `checks.check_{grade_id}({grade_id})` on hand-worked
examples; the hidden test, run when the notebook is graded, compares it with the reference:

> {tests}

::::{{admonition}} Hint
:class: dropdown

{hint}
::::
`````
"""
    if edition == "student":
        return text  # sphinx-exercise's hide_solutions would drop the solution anyway
    includes = []
    for dotted in REFERENCES[grade_id]:
        obj = resolve(dotted)
        path = os.path.relpath(inspect.getsourcefile(obj), page_dir)
        qualname = dotted.partition(":")[2]
        includes.append(f"````{{literalinclude}} {path}\n:pyobject: {qualname}\n````")
    return text + f"""
`````{{solution}} {label}
:class: dropdown

The reference, in `{primary.partition(':')[0]}`:

{chr(10).join(includes)}
`````
"""


# grade id -> (estimated minutes, difficulty 1-3, hint). The estimate is for a reader who has read
# the section; difficulty 1: a direct translation of the formula, 2: a shape or edge case to get
# right, 3: several steps with a loop, bookkeeping or a numerical trap.
EXERCISES: dict[str, tuple[int, int, str]] = {
    "linear_forward": (10, 1, "One matrix product and a broadcast add: `x @ W.T + b`; mind the layout `(out, in)` of `W`."),
    "linear_backward": (20, 2, "Write the forward pass for one element, differentiate by hand, then vectorise: `dW` sums over the batch, `dx` multiplies by `W`, `db` sums `dy` over every leading dimension."),
    "sgd_step": (10, 1, "Update in place under `torch.no_grad()`, and skip parameters whose `.grad` is `None`."),
    "rnn_gradient_norms": (30, 2, "Keep every hidden state with `retain_grad()` (or make them leaves), backpropagate the loss of the last step once, then read each state's `.grad` norm."),
    "get_pair_counts": (10, 1, "`zip(ids, ids[1:])` gives every adjacent pair, overlapping ones included."),
    "merge": (15, 1, "Walk with an index `i`: when `(ids[i], ids[i + 1])` is the pair, append `new_id` and jump by 2, else copy one id and step by 1."),
    "train": (40, 3, "Count pairs over all chunks at each step (never across chunks), pick `min(counts, key=lambda p: (-counts[p], p))`, then merge it in every chunk."),
    "encode": (30, 3, "Within a chunk, repeatedly merge the pair with the *lowest* merge id present (the earliest learned), until no pair of the chunk is in `merges`."),
    "decode": (15, 1, "Build the byte string of every id (256 single bytes, then each merge concatenates its two parts), join the bytes of the ids, decode once with `errors=\"replace\"`."),
    "one_hot_embedding": (10, 1, "`F.one_hot(ids, vocab_size)` gives a `(..., V)` matrix; multiplying it by the table `(V, C)` selects rows. Cast to the table's dtype first."),
    "sinusoidal_encoding": (20, 2, "Build the angles `position * inv_freq` as an outer product `(T, C/2)`, then interleave sin and cos into even and odd columns."),
    "sinusoidal_shift_matrix": (30, 2, "Each (sin, cos) pair rotates by the angle `k * inv_freq[i]`: the matrix is block-diagonal with one 2x2 rotation per frequency."),
    "apply_rope": (30, 3, "Use the half-split layout: rotate `(x1, x2)` into `(-x2, x1)` and combine `x * cos + rotate_half(x) * sin`, with cos and sin broadcast over batch and heads."),
    "causal_mask": (5, 1, "Position `i` may not see `j > i`: that is the strict upper triangle, `torch.triu(..., diagonal=1)`."),
    "scaled_dot_product_attention": (20, 2, "Scores `q @ k.transpose(-2, -1) / sqrt(D)`, masked with `-inf` where the mask is True, softmax over the last dimension, then `@ v`. Compute the softmax in float32 and return the input dtype."),
    "multi_head_attention": (30, 2, "Project, reshape `(B, T, C)` to `(B, H, T, D)`, attend per head, then merge the heads back to `(B, T, C)` before the output projection."),
    "layer_norm": (15, 1, "Mean and *biased* variance over the last dimension, `(x - mean) / sqrt(var + eps)`, then scale and shift."),
    "rms_norm": (10, 1, "No mean subtraction: divide by `sqrt(mean(x**2) + eps)` over the last dimension, then scale."),
    "block_forward": (20, 2, "Pre-LN: each sub-layer reads the normalised residual stream and adds its output back: `x = x + attn(ln1(x))`, then `x = x + ffn(ln2(x))`."),
    "count_parameters": (40, 3, "Count per block (attention with its KV heads, FFN with or without the gate, the norms), multiply by the layers, then add the embeddings, the final norm and an untied head."),
    "cross_entropy": (20, 2, "Subtract the row maximum before `exp` (log-sum-exp), pick the target's log-probability with `gather`, and average over the positions that are not ignored."),
    "adamw_step": (30, 2, "Decay the weight first (`p -= lr * wd * p`), update both moments, correct their bias with the step count, then step by `m_hat / (sqrt(v_hat) + eps)`."),
    "warmup_cosine": (15, 1, "Three regions: linear warm-up to the peak, cosine from the peak to the minimum, and the minimum after the end."),
    "clip_grad_norm": (15, 1, "The total norm is the norm of all gradients concatenated; scale every gradient by `max_norm / (total + 1e-6)` only when that factor is below 1."),
    "is_spike": (20, 2, "Compare the loss with the mean and standard deviation of the recent window; a spike is strictly above the threshold, and a short history is never a spike."),
    "flops_per_token": (15, 1, "Kaplan counts 2 FLOPs per parameter of each matrix the token passes through, plus the attention's score and value products over the context."),
    "fit_power_law": (20, 2, "A power law is a line in log-log space: fit `log y = log a + b log x` by least squares and map back."),
    "chinchilla_optimal": (20, 2, "Minimise the loss along `C = 6 N D`: the optimum has a closed form in the law's constants, `N_opt = G (C/6)^(beta/(alpha+beta))`."),
    "apply_temperature": (10, 1, "Divide the logits by the temperature; temperature 0 means greedy, so keep only the maximum."),
    "top_k_filter": (15, 1, "Find the k-th largest logit of each row with `torch.topk` and set everything strictly below it to `-inf`."),
    "top_p_filter": (30, 2, "Sort descending, take the cumulative softmax, and drop a token when the mass *before* it already reaches `p`; always keep the first token, then scatter back to the original order."),
    "sample_next": (30, 3, "Apply temperature, then top-k, then top-p, then sample with `torch.multinomial` and the given generator (greedy when the temperature is 0)."),
    "perplexity": (30, 3, "Sum the next-token negative log-likelihoods over windows of the context length (each token scored once), divide by their count, then exponentiate."),
    "cached_attention": (30, 2, "Write the new keys and values into the slots `length : length + T` of the cache, then attend over the filled prefix with a causal mask offset by `length`."),
    "verify_draft": (30, 3, "Accept draft token `i` when `u[i] < p[i, x] / q[i, x]`; at the first rejection, resample from the normalised `max(p - q, 0)`; if all are accepted, sample the bonus token from the last `p`."),
    "quantize_groupwise": (20, 2, "Reshape to `(out, G, group_size)`, take the absmax per group, `scale = absmax / Q` (1 for an all-zero group), then round and clamp to `[-Q, Q]`."),
    "dequantize_groupwise": (10, 1, "Reshape the integers to `(out, G, g)`, multiply by the scale with a trailing axis, reshape back."),
    "top_k_routing": (15, 1, "Softmax in float32 over the experts, `torch.topk`, and renormalise the k weights to sum to 1 if asked."),
    "load_balancing_loss": (20, 2, "`f` counts top-k assignments per expert divided by the number of tokens, `P` is the mean router probability per expert; the loss is `E * sum(f * P)`."),
    "moe_forward": (40, 3, "Route every token, then loop over the experts: gather the tokens sent to each, run its SwiGLU, and add the output weighted by the routing weight with `index_add_`."),
    "masked_sft_loss": (20, 2, "Shift logits and labels by one position, keep only the positions whose mask is True, and average over those."),
    "lora_forward": (15, 1, "The frozen output plus `(alpha / r) * x @ A.T @ B.T`; never form the full `B @ A` in the forward pass."),
    "merge_weight": (10, 1, "The merged weight is `W + (alpha / r) * B @ A`, in `W`'s `(out, in)` layout."),
    "pairwise_loss": (10, 1, "Bradley-Terry: `-logsigmoid(r_chosen - r_rejected)`, averaged; `logsigmoid` stays finite for large margins."),
    "gae": (30, 3, "Go backwards in time: `delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = delta_t + gamma lambda A_{t+1}`, resetting at the end of each episode."),
    "ppo_clip_loss": (20, 2, "Ratio `exp(logp_new - logp_old)`; take the minimum of the ratio and the clipped ratio times the advantage, negate and average."),
    "dpo_loss": (20, 2, "The implicit reward is `beta * (logp_policy - logp_ref)`; the loss is the pairwise loss of the chosen and rejected implicit rewards."),
    "average_gradients": (20, 2, "Average each parameter's gradient over the replicas (an all-reduce divided by the world size); a parameter with no gradient stays without one."),
    "data_parallel_gradients": (30, 3, "Split the batch across replicas, compute each replica's gradient of the loss *summed* over its share, then combine so the result equals the full-batch gradient, even for uneven splits."),
    "memory_per_device": (30, 2, "Add weights, gradients and optimizer states in bytes per parameter, and divide by the number of devices only for what the ZeRO stage shards."),
    "retrieval_prompt": (15, 1, "Place the needle at the requested position among the distractors, then append the question."),
    "accuracy_by_position": (20, 2, "Group the results by the needle's position and average the correct answers in each group."),
    "expected_calibration_error": (30, 2, "Bin the confidences into equal-width bins (mind which side of each bin is closed, as the statement says), skip empty bins, then sum `|accuracy - confidence|` per bin weighted by its share of the samples."),
    "minhash_signature": (15, 1, "Broadcast: `a[:, None] * x[None, :] + b[:, None]` is the (k, n) table of hashes; reduce it mod PRIME in int64 and take the minimum along the shingles."),
    "lsh_candidate_pairs": (25, 2, "For each band, a dict from the band's values (as a tuple) to the documents that have them; every pair inside a bucket is a candidate. Collect the pairs in a set, then sort."),
    "induction_score": (25, 2, "Walk each sequence once, remembering where every token was last seen; at a repeat, add the attention from i to last_seen + 1, then average over the repeats of the whole batch."),
    "score_answers": (20, 2, "Feed `prompts` followed by `answers[:, :-1]`; the last m positions' logits predict the m answer tokens. Average their log-softmax at the answer ids; exact match needs every argmax right."),
}
