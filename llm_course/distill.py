"""Knowledge distillation: training a small student on a larger teacher's predictions (chapter 09).

Hinton et al. (2015): the teacher's whole next-token distribution says more than the one token the
data holds (which other tokens were plausible, and how much). The student minimizes a mix of the
KL divergence from the teacher's distribution to its own, both softened by a temperature T, and
the ordinary cross-entropy on the data:

    loss = alpha * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + (1 - alpha) * CE(z_s, y),

averaged over the positions. The T^2 keeps the soft term's gradient the same size whatever T:
d KL / d z_s = (softmax(z_s/T) - softmax(z_t/T)) / T, and for large T that difference itself
shrinks like 1/T (Hinton et al., §2.1).

- `distillation_loss(student_logits, teacher_logits, targets, temperature, alpha)`, a pure
  function returning the loss and its two parts;
- `Distillation(teacher, temperature, alpha)`, an objective for `trainer.Trainer`: the
  teacher runs without gradients (in eval mode; it is not a parameter of the trained model);
  metrics "cross_entropy" and "kl" (so the validation history holds the student's
  cross-entropy on held-out text, comparable with a student trained alone);
- `DistillRecipe`, `student_config` and `train_students`: the same student trained on the
  same tokens, steps and seed, alone (at two learning rates) and distilled from the course's
  tiny pretrained model (`pretrained.load_pretrained("tiny")`); the runs are cached
  (`llm_course.cache`), so a book build trains them once.

Left out: distilling hidden states or attention maps (TinyBERT, MiniLM), sequence-level
distillation (training on the teacher's generated text), and on-policy distillation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from llm_course import cache as course_cache
from llm_course.checkpoints import load_model, save_model
from llm_course.data import load_corpus
from llm_course.losses import cross_entropy
from llm_course.pretrained import RECIPES, load_pretrained, recipe_settings
from llm_course.trainer import Metrics, TrainConfig, Trainer, encode_split
from llm_course.transformer import Transformer, TransformerConfig


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, ce) for logits (..., V) of the student and the teacher and targets (...).

    kl = T^2 * mean over positions of KL(softmax(teacher / T) || softmax(student / T)), ce the
    cross-entropy of the student on the targets, loss = alpha * kl + (1 - alpha) * ce.
    Computed in float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)} (do they share the tokenizer?)"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    kl_per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (...)
    kl = temperature**2 * kl_per_position.mean()
    ce = cross_entropy(student_logits, targets)
    return alpha * kl + (1 - alpha) * ce, kl, ce


@dataclass(frozen=True, eq=False)
class Distillation:
    """Objective for `Trainer`: `distillation_loss` of the trained model against `teacher` on batches (x, y)."""

    teacher: nn.Module  # same vocabulary as the student; kept in eval mode, never updated
    temperature: float = 2.0  # T: softens both distributions
    alpha: float = 0.5  # weight of the T^2-scaled KL; 1 - alpha on the cross-entropy with the data

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        x, y = batch  # (B, T) each
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)  # (B, T, V)
        loss, kl, ce = distillation_loss(model(x), teacher_logits, y, self.temperature, self.alpha)
        return loss, {"cross_entropy": ce.detach(), "kl": kl.detach()}


# ---------------------------------------------------------------------------------------
# The experiment: one student, alone and distilled
# ---------------------------------------------------------------------------------------


def student_config(vocab_size: int) -> TransformerConfig:
    """The student: 2 layers, 64 wide, 2 heads (the tiny teacher has 4 layers, 128 wide), context 128."""
    return TransformerConfig(vocab_size=vocab_size, context_length=128, d_model=64, n_layers=2, n_heads=2, d_ff=256)


@dataclass(frozen=True)
class StudentRun:
    """One training run of the student."""

    name: str  # its folder in the cache entry and its key in the results
    lr: float  # peak learning rate
    distilled: bool  # the `Distillation` objective, or plain language modeling


@dataclass
class DistillRecipe:
    """The student runs: the same model, initialization, batches and steps; the objective and the
    learning rate differ. Alone at two learning rates, so that the distilled run is compared with
    the better of them, not with a badly tuned one (soft targets tolerate a higher rate)."""

    teacher: str = "tiny"  # the pretrained model (`pretrained.RECIPES`) the student learns from
    student: TransformerConfig = field(default_factory=lambda: student_config(4096))
    train: TrainConfig = field(  # lr is set by each run
        default_factory=lambda: TrainConfig(batch_size=8, seq_len=64, max_steps=150, warmup_steps=15,
                                            eval_interval=25, eval_batches=6, weight_decay=0.1, seed=0)  # fmt: skip
    )
    runs: tuple[StudentRun, ...] = (
        StudentRun("alone-lr3e-3", 3e-3, False),
        StudentRun("alone-lr1e-2", 1e-2, False),
        StudentRun("distilled-lr1e-2", 1e-2, True),
    )
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the KL term in the distilled runs


def _train_one(
    recipe: DistillRecipe, run: StudentRun, teacher: nn.Module, train_tokens: torch.Tensor, val_tokens: torch.Tensor
) -> tuple[Transformer, dict]:
    """One student run: distilled from `teacher`, or alone (language modeling)."""
    start = time.perf_counter()
    student = Transformer(recipe.student, generator=torch.Generator().manual_seed(recipe.train.seed))
    extra = {"objective": Distillation(teacher, recipe.temperature, recipe.alpha)} if run.distilled else {}
    config = dataclasses.replace(recipe.train, lr=run.lr)
    trainer = Trainer(student, config, train_tokens, val_tokens, log=None, **extra)
    trainer.train()
    val_ce = trainer.val_history["cross_entropy" if run.distilled else "loss"]
    info = {"val_step": trainer.val_history["step"], "val_cross_entropy": val_ce,
            "train_loss": trainer.history["loss"], "seconds": time.perf_counter() - start}  # fmt: skip
    return student.eval(), info


def train_students(
    recipe: DistillRecipe | None = None, cache: str | Path | None = None, log=print
) -> tuple[dict[str, Transformer], dict]:
    """({run name: model}, info) for `recipe`: trained once, then read from the cache.

    info[run name] holds the run's validation cross-entropy curve ("val_step",
    "val_cross_entropy"; on the data, also for a distilled run), its training losses and seconds.
    """
    recipe = DistillRecipe() if recipe is None else recipe
    if recipe.teacher not in RECIPES:
        raise ValueError(f"no pretrained teacher called {recipe.teacher!r}; the course has {sorted(RECIPES)}")
    if recipe.train.seq_len > recipe.student.context_length:
        raise ValueError(
            f"seq_len {recipe.train.seq_len} exceeds the student's context_length {recipe.student.context_length}"
        )
    names = [run.name for run in recipe.runs]
    if len(set(names)) != len(names) or not all(name.replace("-", "").replace(".", "").isalnum() for name in names):
        raise ValueError(f"run names must be distinct and made of letters, digits, '-' and '.', got {names}")

    def build(tmp: Path) -> None:
        teacher, tokenizer = load_pretrained(recipe.teacher, log=log)
        if teacher.config.vocab_size != recipe.student.vocab_size:
            raise ValueError(
                f"the student's vocabulary ({recipe.student.vocab_size}) must be the teacher's "
                f"({teacher.config.vocab_size})"
            )
        if log is not None:
            log(f"training the students once; they will be cached in {tmp.parent}")
        teacher_recipe = RECIPES[recipe.teacher]()  # the teacher's own data and split
        text = load_corpus(teacher_recipe.corpus)
        train_tokens, val_tokens = encode_split(text, tokenizer, teacher_recipe.val_fraction)
        info = {"recipe": dataclasses.asdict(recipe)}
        for run in recipe.runs:
            model, info[run.name] = _train_one(recipe, run, teacher, train_tokens, val_tokens)
            save_model(model, tmp / run.name)
        (tmp / "info.json").write_text(json.dumps(info) + "\n")

    settings = {"recipe": recipe, "teacher": recipe_settings(recipe.teacher)}
    folder = course_cache.cached_entry("distill", "students", settings, __name__, build, cache)
    models = {name: load_model(folder / name).eval() for name in names}
    return models, json.loads((folder / "info.json").read_text())
