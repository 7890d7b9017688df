"""Tests for llm_course.distill: the loss against PyTorch's kl_div and cross_entropy, the T^2 scaling
of the gradient, gradients reaching the student only, a short Trainer run with the objective, and
errors for bad input."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from llm_course.distill import Distillation, DistillRecipe, StudentRun, distillation_loss, train_students
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, tiny


def _logits(seed=0, shape=(3, 5, 11), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * scale
    teacher = torch.randn(*shape, generator=g) * scale
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return student, teacher, targets


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.0)])
def test_loss_equals_kl_div_and_cross_entropy(temperature, alpha):
    student, teacher, targets = _logits()
    loss, kl, ce = distillation_loss(student, teacher, targets, temperature, alpha)
    V = student.shape[-1]
    reference_kl = F.kl_div(
        F.log_softmax(student.reshape(-1, V) / temperature, dim=-1),
        F.log_softmax(teacher.reshape(-1, V) / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )  # KL(teacher || student), summed over the vocabulary, averaged over the 15 positions
    reference_ce = F.cross_entropy(student.reshape(-1, V), targets.reshape(-1))
    torch.testing.assert_close(kl, temperature**2 * reference_kl)
    torch.testing.assert_close(ce, reference_ce)
    torch.testing.assert_close(loss, alpha * temperature**2 * reference_kl + (1 - alpha) * reference_ce)


def test_kl_is_zero_for_a_perfect_student():
    _, teacher, targets = _logits()
    _, kl, _ = distillation_loss(teacher.clone(), teacher, targets, 3.0, 1.0)
    assert abs(kl.item()) < 1e-6


def test_t_squared_keeps_the_gradient_scale():
    """d(T^2 KL)/d z_s tends to ((z_s - mean z_s) - (z_t - mean z_t)) / (V * positions) as T grows
    (Hinton et al. 2015, eq. 3-4): the T^2 factor makes it independent of T."""
    student, teacher, targets = _logits(scale=0.5)
    V, positions = student.shape[-1], student[..., 0].numel()
    limit = ((student - student.mean(-1, keepdim=True)) - (teacher - teacher.mean(-1, keepdim=True))) / (V * positions)
    grads = {}
    for T in (1.0, 10.0, 50.0):
        z = student.clone().requires_grad_()
        distillation_loss(z, teacher, targets, T, alpha=1.0)[0].backward()
        grads[T] = z.grad
    # The next term of the expansion is O(1/T): the gap shrinks about 5 times from T = 10 to 50.
    assert (grads[50.0] - limit).norm() < 0.01 * limit.norm()
    assert (grads[10.0] - limit).norm() < 0.05 * limit.norm()
    assert (grads[50.0] - limit).norm() < 0.4 * (grads[10.0] - limit).norm()
    # Without the T^2 the gradient would shrink like 1/T^2: 2,500 times smaller at T = 50.
    assert 0.5 < grads[50.0].norm() / grads[1.0].norm() < 2


def _pair(seed=0):
    config = dataclasses.replace(tiny(61), n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=16)
    teacher = Transformer(config, generator=torch.Generator().manual_seed(seed)).eval()
    student_config = dataclasses.replace(config, d_model=16, d_ff=32)
    student = Transformer(student_config, generator=torch.Generator().manual_seed(seed + 1))
    return teacher, student


def test_gradient_reaches_the_student_only():
    teacher, student = _pair()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randint(0, 61, (2, 16))
    loss, metrics = Distillation(teacher, temperature=2.0, alpha=0.7)(student, (x, x.roll(-1, 1)))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.requires_grad)
    assert set(metrics) == {"cross_entropy", "kl"} and not metrics["kl"].requires_grad
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_trainer_with_the_objective_moves_the_student_towards_the_teacher():
    teacher, student = _pair()
    tokens = torch.randint(0, 61, (2000,), generator=torch.Generator().manual_seed(4))
    objective = Distillation(teacher, temperature=1.0, alpha=1.0)  # pure distillation
    x = tokens[:64].reshape(4, 16)
    with torch.no_grad():
        before = objective(student, (x, x))[1]["kl"]
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=40, lr=1e-2, warmup_steps=2, eval_interval=0)
    trainer = Trainer(student, config, tokens, log=None, objective=objective)
    trainer.train()
    assert {"cross_entropy", "kl"} <= set(trainer.history)
    assert not teacher.training  # the trainer switched the student to train mode, not the teacher
    with torch.no_grad():
        after = objective(student.eval(), (x, x))[1]["kl"]
    assert after < 0.5 * before


def test_errors_for_bad_input():
    student, teacher, targets = _logits()
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(student[..., :-1], teacher, targets)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, targets, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, targets, alpha=1.5)
    with pytest.raises(ValueError, match="no pretrained teacher"):
        train_students(DistillRecipe(teacher="huge"))
    recipe = DistillRecipe()
    recipe.train = dataclasses.replace(recipe.train, seq_len=256)
    with pytest.raises(ValueError, match="context_length"):
        train_students(recipe)
    runs = (StudentRun("alone", 1e-3, False), StudentRun("alone", 1e-2, False))
    with pytest.raises(ValueError, match="distinct"):
        train_students(DistillRecipe(runs=runs))
