"""The training loop: data order, exact resume, checkpoints, spikes, NaN, rollback, FLOPs, the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

from llm_course.checkpoints import load_model
from llm_course.trainer import (
    SpikeDetector,
    TokenBatches,
    Trainer,
    TrainConfig,
    eval_batches,
    palm_flops_per_token,
    is_spike,
    peak_flops,
    sample_text,
)
from llm_course.transformer import Transformer, TransformerConfig, gpt2_small, tiny

V = 48


def model_config(**kw) -> TransformerConfig:
    return TransformerConfig(vocab_size=V, context_length=16, d_model=32, n_layers=2, n_heads=2, **kw)


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    """A learnable stream: a cycle through the vocabulary with 10% of the tokens random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) * 7 % V
    noise = torch.rand(n, generator=g) < 0.1
    return torch.where(noise, torch.randint(0, V, (n,), generator=g), ids)


def make_trainer(out_dir=None, model_kw=None, log=None, **kw) -> Trainer:
    settings = dict(batch_size=4, seq_len=16, max_steps=12, lr=3e-3, warmup_steps=3, eval_interval=4,
                    eval_batches=2, spike_min_history=4, spike_window=20)  # fmt: skip
    settings.update(kw)
    model = Transformer(model_config(**(model_kw or {})), generator=torch.Generator().manual_seed(0))
    return Trainer(model, TrainConfig(**settings), tokens(3000), tokens(400, seed=1), out_dir=out_dir, log=log)


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- data
def test_batches_are_shifted_windows_in_a_resumable_order():
    stream = torch.arange(1000)
    data = TokenBatches(stream, batch_size=3, seq_len=10, seed=5)
    x, y = data.next_batch()
    assert x.shape == y.shape == (3, 10) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    for _ in range(40):  # through several epochs
        data.next_batch()
    state = data.state_dict()
    want = [data.next_batch() for _ in range(50)]
    again = TokenBatches(stream, batch_size=3, seq_len=10, seed=5)
    again.load_state_dict(json.loads(json.dumps(state)))
    got = [again.next_batch() for _ in range(50)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(want, got))
    assert data.epoch >= 2


def test_one_epoch_visits_each_window_once():
    data = TokenBatches(torch.arange(1001), batch_size=1, seq_len=10, seed=0)
    starts = [int(data.next_batch()[0][0, 0]) for _ in range(len(data._epoch_starts(0)))]
    assert len(set(starts)) == len(starts) and len({s % 10 for s in starts}) == 1  # one offset per epoch


def test_eval_batches_are_fixed_and_cover_the_start():
    batches = eval_batches(torch.arange(100), batch_size=4, seq_len=10, n_batches=2)
    assert [b[0].shape for b in batches] == [(4, 10), (4, 10)]
    assert batches[0][0][1, 0] == 10 and torch.equal(batches[0][1], batches[0][0] + 1)
    with pytest.raises(ValueError, match="at least"):
        eval_batches(torch.arange(5), 4, 10, 1)
    with pytest.raises(ValueError, match="too few"):
        TokenBatches(torch.arange(15), 2, 10)


# --------------------------------------------------------------------------- the loop
def test_training_lowers_the_loss_and_logs_validation():
    lines = []
    trainer = make_trainer(max_steps=30, log=lines.append)
    history = trainer.train()
    assert len(history["loss"]) == 30 and history["action"] == ["update"] * 30
    assert history["loss"][0] == pytest.approx(math.log(V), abs=0.3)  # uniform predictions at init
    assert sum(history["loss"][-5:]) / 5 < history["loss"][0] - 0.5
    assert history["lr"][0] == 0.0 and max(history["lr"]) == pytest.approx(3e-3)
    assert trainer.val_history["step"] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert any("validation loss" in line for line in lines)


def test_gradient_accumulation_equals_a_bigger_batch():
    a = make_trainer(batch_size=4, grad_accum=1, max_steps=3)
    b = make_trainer(batch_size=2, grad_accum=2, max_steps=3)
    a.train(), b.train()
    assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fused_adamw", [False, True])
def test_exact_resume(tmp_path, fused_adamw):
    """A run stopped at step 5 and resumed gives the same losses, bit for bit, as one that never stopped."""
    kw = dict(model_kw={"dropout": 0.1}, fused_adamw=fused_adamw, checkpoint_interval=5)
    straight = make_trainer(tmp_path / "a", **kw)
    straight.train()
    first = make_trainer(tmp_path / "b", **kw)
    first.train(until_step=5)
    del first
    torch.manual_seed(123)  # anything the process does in between must not matter
    resumed = Trainer.resume(tmp_path / "b", tokens(3000), tokens(400, seed=1), log=None)
    assert resumed.step == 5
    resumed.train()
    assert resumed.history["loss"] == straight.history["loss"]  # exact equality
    assert resumed.val_history["loss"] == straight.val_history["loss"]
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_round_trip_and_pruning(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_interval=2, keep_checkpoints=2, max_steps=7)
    trainer.train()
    assert [s for s, _ in trainer.checkpoints()] == [6, 7]  # step 0, 2, 4 pruned
    last = trainer.checkpoints()[-1][1]
    assert {p.name for p in last.iterdir()} == {
        "model.safetensors", "llm_course_config.json", "optimizer.safetensors", "trainer_state.safetensors", "trainer.json",
    }  # fmt: skip
    model = load_model(last)  # a checkpoint is also a plain model folder
    for p, q in zip(model.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q)
    meta = json.loads((last / "trainer.json").read_text())
    assert meta["step"] == 7 and meta["train_config"]["max_steps"] == 7 and meta["data"]["seed"] == 0
    other = make_trainer(tmp_path / "other", max_steps=7)
    other.load_checkpoint(last)
    for p, q in zip(other.model.parameters(), trainer.model.parameters()):
        a, b = other.optimizer.state[p], trainer.optimizer.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert other.step == 7 and other.history == trainer.history


def test_bf16_autocast_on_cpu_runs():
    trainer = make_trainer(precision="bf16", max_steps=2)
    assert trainer.use_bf16
    trainer.train()
    assert all(math.isfinite(x) for x in trainer.history["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights


# --------------------------------------------------------------------------- objectives and data sources
class ShuffledPairs:
    """A data source of dict batches: fixed (x, y) pairs of sequences, reshuffled each epoch by (seed, epoch)."""

    def __init__(self, stream: torch.Tensor, batch_size: int, seq_len: int = 16, seed: int = 0):
        n = (len(stream) - 1) // seq_len
        self.x = stream[: n * seq_len].view(n, seq_len)
        self.y = stream[1 : n * seq_len + 1].view(n, seq_len)
        self.batch_size, self.seed, self.epoch, self.cursor = batch_size, seed, 0, 0

    def next_batch(self):
        if self.cursor + self.batch_size > len(self.x):
            self.epoch, self.cursor = self.epoch + 1, 0
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(1000 * self.seed + self.epoch))
        rows = order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return {"input": self.x[rows], "target": self.y[rows]}

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state):
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]


def z_loss_objective(model, batch):
    """Cross-entropy plus 1e-3 x the squared log-partition function (PaLM's z-loss), both logged."""
    logits = model(batch["input"])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["target"].flatten())
    z = logits.logsumexp(dim=-1).pow(2).mean()
    return ce + 1e-3 * z, {"cross_entropy": ce, "z_loss": z}


def custom_trainer(out_dir=None, cls=Trainer, **kw) -> Trainer:
    settings = dict(batch_size=4, seq_len=16, max_steps=12, lr=3e-3, warmup_steps=3, eval_interval=4,
                    spike_min_history=4, spike_window=20)  # fmt: skip
    settings.update(kw)
    model = Transformer(model_config(dropout=0.1), generator=torch.Generator().manual_seed(0))
    val = ShuffledPairs(tokens(400, seed=1), batch_size=4)
    return cls(model, TrainConfig(**settings), data=ShuffledPairs(tokens(3000), batch_size=4),
               val_batches=[val.next_batch() for _ in range(2)], objective=z_loss_objective, out_dir=out_dir,
               log=None)  # fmt: skip


def test_an_objectives_metrics_are_logged_per_step_and_per_validation():
    trainer = custom_trainer(max_steps=8)
    history = trainer.train()
    assert len(history["z_loss"]) == len(history["cross_entropy"]) == len(history["loss"]) == 8
    for loss, ce, z in zip(history["loss"], history["cross_entropy"], history["z_loss"]):
        assert loss == pytest.approx(ce + 1e-3 * z, rel=1e-6)  # the loss is the objective's, aux term included
    assert trainer.val_history["step"] == [4, 8] and len(trainer.val_history["z_loss"]) == 2
    assert history["cross_entropy"][0] == pytest.approx(math.log(V), abs=0.3)


def test_the_moe_objective_adds_the_balance_loss():
    from llm_course.trainer import MoELanguageModeling
    from llm_course.transformer import moe_aux_loss

    model = Transformer(model_config(n_experts=4, experts_per_token=2), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=6, lr=3e-3, warmup_steps=2, eval_interval=3,
                         eval_batches=2)  # fmt: skip
    trainer = Trainer(model, config, tokens(3000), tokens(400, seed=1), objective=MoELanguageModeling(0.5), log=None)
    batch = trainer.get_batch()
    loss, metrics = trainer.compute_loss(batch)
    logits = model(batch[0])  # an independent computation of the same quantity
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[1].flatten()) + 0.5 * moe_aux_loss(model)
    torch.testing.assert_close(loss, want)
    trainer.train()
    assert all(2.0 - 1e-5 <= a <= 4.0 + 1e-5 for a in trainer.history["aux_loss"])  # k (balanced) to E (collapsed)
    for loss, ce, aux in zip(trainer.history["loss"], trainer.history["cross_entropy"], trainer.history["aux_loss"]):
        assert loss == pytest.approx(ce + 0.5 * aux, rel=1e-6)
    assert len(trainer.val_history["aux_loss"]) == 2


def test_bad_objectives_and_data_arguments_are_refused():
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=2, warmup_steps=1)
    with pytest.raises(ValueError, match="either train_tokens or a data source"):
        Trainer(model, config, tokens(3000), data=ShuffledPairs(tokens(3000), 4), log=None)
    with pytest.raises(ValueError, match="either train_tokens or a data source"):
        Trainer(model, config, log=None)
    for metrics, match in [({"lr": torch.tensor(1.0)}, "taken"), ({"rows": torch.ones(3)}, "one number")]:
        def objective(model, batch, metrics=metrics):
            return z_loss_objective(model, batch)[0], metrics

        trainer = Trainer(model, config, data=ShuffledPairs(tokens(3000), 4), objective=objective, log=None)
        with pytest.raises(ValueError, match=match):
            trainer.train_step()
    trainer = Trainer(model, config, data=ShuffledPairs(tokens(3000), 4), log=None,
                      objective=lambda m, b: (torch.ones(2, requires_grad=True), {}))  # fmt: skip
    with pytest.raises(ValueError, match="scalar"):
        trainer.train_step()


def test_exact_resume_with_a_custom_objective_and_data_source(tmp_path):
    straight = custom_trainer(tmp_path / "a", checkpoint_interval=5)
    straight.train()
    first = custom_trainer(tmp_path / "b", checkpoint_interval=5)
    first.train(until_step=5)
    del first
    torch.manual_seed(123)
    val = ShuffledPairs(tokens(400, seed=1), batch_size=4)
    resumed = Trainer.resume(tmp_path / "b", None, None, log=None, data=ShuffledPairs(tokens(3000), batch_size=4),
                             val_batches=[val.next_batch() for _ in range(2)], objective=z_loss_objective)  # fmt: skip
    assert resumed.step == 5 and resumed.data.state_dict() == {"seed": 0, "epoch": 0, "cursor": 20}
    resumed.train()
    assert set(resumed.history) == set(straight.history)
    for key in ("loss", "cross_entropy", "z_loss", "grad_norm", "lr", "action"):
        assert resumed.history[key] == straight.history[key], key  # exact equality
    assert resumed.val_history["z_loss"] == straight.val_history["z_loss"]
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------- spikes
def test_is_spike_worked_examples():
    history = [2.0, 2.2, 1.8, 2.0, 2.2, 1.8, 2.0, 2.0]  # mean 2, std 0.1414
    assert not is_spike(2.5, history, threshold=4.0, min_history=5)  # 3.5 std above
    assert is_spike(2.6, history, threshold=4.0, min_history=5)  # 4.2 std above
    assert not is_spike(0.1, history, threshold=4.0, min_history=5)  # far below is not a spike
    assert not is_spike(100.0, history[:3], threshold=4.0, min_history=5)  # not enough history yet
    assert is_spike(float("nan"), [], min_history=5) and is_spike(float("inf"), history)


def test_spike_detector_explains_and_ignores_bad_values():
    detector = SpikeDetector(threshold=4.0, window=10, min_history=5)
    for i in range(10):
        assert detector.check(3.0 + 0.01 * (i % 3), 1.0 + 0.1 * (i % 2)) is None
        detector.accept(3.0 + 0.01 * (i % 3), 1.0 + 0.1 * (i % 2))
    reason = detector.check(5.0, 1.0)
    assert reason.startswith("loss 5 is") and "standard deviations above the mean of the last 10 steps" in reason
    assert detector.check(3.0, 9.0).startswith("gradient norm 9 is")
    assert detector.check(float("nan"), 1.0) == "loss is nan"
    assert detector.check(3.0, float("inf")) == "gradient norm is inf"
    assert detector.check(float("nan"), float("nan")) == "loss is nan; gradient norm is nan"
    assert len(detector.losses) == 10  # nothing bad was added


class PlantedBatch(Trainer):
    """Replaces the training batch of step `bad_step` with one random token repeated: a planted spike."""

    bad_step = 15

    def get_batch(self):
        x, y = super().get_batch()
        if self.step == self.bad_step:
            x = torch.full_like(x, 5)
            y = torch.full_like(y, 41)  # "after 5 comes 41", never seen in the data
        return x, y


def test_planted_spike_is_skipped_and_logged():
    lines = []
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=25, lr=3e-3, warmup_steps=3, eval_interval=0,
                         spike_min_history=8, spike_window=20)  # fmt: skip
    trainer = PlantedBatch(model, config, tokens(3000), None, log=lines.append)
    trainer.train(until_step=15)
    before = params(model)
    record = trainer.train_step()
    assert record["action"] == "skip" and record["step"] == 15
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update was not applied
    assert lines[-1].startswith("step 15: skipped the update: ") and "standard deviations above" in lines[-1]
    trainer.train()
    assert trainer.history["action"].count("skip") == 1 and trainer.events == lines


class NaNAt(Trainer):
    """The loss of step `nan_step` is NaN (as from an overflow in a bad batch)."""

    nan_step = 6

    def compute_loss(self, batch):
        loss, metrics = super().compute_loss(batch)
        return (loss * float("nan") if self.step == self.nan_step and self.model.training else loss), metrics


class InfGradAt(Trainer):
    """One gradient entry of step `bad_step` becomes infinite."""

    bad_step = 6

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.blocks[0].ffn.w1.weight.register_hook(self.poison)

    def poison(self, grad):
        if self.step != self.bad_step:
            return grad
        return grad.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf")))


@pytest.mark.parametrize("cls", [NaNAt, InfGradAt])
def test_nan_or_inf_never_reaches_the_weights(cls):
    lines = []
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=10, lr=3e-3, warmup_steps=2, eval_interval=0, spike_threshold=0)
    trainer = cls(model, config, tokens(3000), log=lines.append)
    trainer.train(until_step=6)
    before = params(model)
    state_before = {k: v.clone() for k, v in trainer.optimizer.state[model.lm_head.weight].items()}
    record = trainer.train_step()
    assert record["action"] == "skip"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for k, v in trainer.optimizer.state[model.lm_head.weight].items():
        assert torch.equal(v, state_before[k])  # the moments are untouched too
    assert "is nan" in lines[-1] or "is inf" in lines[-1]
    trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.history["action"].count("update") == 9


class LearningRateBlowUp(Trainer):
    """Step `bad_step` uses a learning rate 1000 times too large: the weights are damaged."""

    bad_step = 14

    def learning_rate(self, step):
        return super().learning_rate(step) * (1000.0 if step == self.bad_step and not self.rollbacks else 1.0)


@pytest.mark.parametrize("action", ["rollback", "skip"])
def test_damaged_weights_are_rolled_back(tmp_path, action):
    lines = []
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=30, lr=3e-3, warmup_steps=3, eval_interval=0,
                         checkpoint_interval=4, spike_min_history=8, spike_window=20, spike_threshold=4.0,
                         spike_action=action, spike_patience=3)  # fmt: skip
    trainer = LearningRateBlowUp(model, config, tokens(3000), out_dir=tmp_path, log=lines.append)
    trainer.train()
    rollbacks = [line for line in trainer.events if "rolled back" in line]
    assert len(rollbacks) == 1, trainer.events
    assert "checkpoint of step 12" in rollbacks[0]  # the newest one from before the damaging update of step 14
    if action == "skip":
        assert trainer.history["action"][15:17] == ["skip", "skip"]  # patience 3: two skips, then the rollback
    assert trainer.step == 30 and trainer.rollbacks == 1
    good = [loss for loss, a in zip(trainer.history["loss"], trainer.history["action"]) if a == "update"]
    assert good[-1] < good[0] - 0.5  # training recovered


def test_rollback_with_a_custom_objective_and_data_source(tmp_path):
    trainer = custom_trainer(tmp_path, cls=LearningRateBlowUp, max_steps=30, eval_interval=0, checkpoint_interval=4,
                             spike_min_history=8, spike_threshold=4.0, spike_action="rollback")  # fmt: skip
    trainer.train()
    rollbacks = [line for line in trainer.events if "rolled back" in line]
    assert len(rollbacks) == 1 and "checkpoint of step 12" in rollbacks[0], trainer.events
    assert trainer.step == 30 and len(trainer.history["z_loss"]) == len(trainer.history["loss"]) == trainer.iteration
    # The data source went on from where it was: every batch of the run was a new one.
    assert trainer.data.epoch * (len(trainer.data.x) // 4) + trainer.data.cursor // 4 == trainer.iteration
    good = [ce for ce, a in zip(trainer.history["cross_entropy"], trainer.history["action"]) if a == "update"]
    assert good[-1] < good[0] - 0.5


class NewLevel(PlantedBatch):
    """From step 12 on, every batch is the planted one: the data has changed for good."""

    def get_batch(self):
        self.bad_step = max(self.step, 12)
        return super().get_batch()


def test_a_lasting_new_level_without_checkpoints_restarts_the_statistics():
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=20, lr=3e-3, warmup_steps=3, eval_interval=0,
                         spike_min_history=8, spike_threshold=4.0, spike_patience=3)  # fmt: skip
    lines = []
    trainer = NewLevel(model, config, tokens(3000), log=lines.append)
    trainer.train()
    assert trainer.history["action"][12:15] == ["skip", "skip", "restart"]
    assert "restarted the statistics" in lines[-1] or "restarted the statistics" in trainer.events[2]
    assert trainer.history["action"][15:] == ["update"] * 5


def test_no_checkpoint_to_roll_back_to_raises():
    model = Transformer(model_config(), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=10, eval_interval=0, spike_threshold=0, spike_patience=2)

    class AlwaysNaN(Trainer):
        def compute_loss(self, batch):
            loss, metrics = super().compute_loss(batch)
            return loss * float("nan"), metrics

    with pytest.raises(RuntimeError, match="no checkpoint"):
        AlwaysNaN(model, config, tokens(3000), log=None).train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- FLOPs
def test_flops_per_token_matches_pytorch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    config = TransformerConfig(vocab_size=300, context_length=32, d_model=64, n_layers=3, n_heads=4, bias=False)
    model = Transformer(config)
    idx = torch.randint(0, 300, (2, 32))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    measured = counter.get_total_flops()
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    expected = palm_flops_per_token(config) * 2 * 32 - 6 * norms * 2 * 32  # the counter sees matmuls only
    assert measured == expected


def test_flops_per_token_gpt2_small():
    c = gpt2_small()
    n = 124_439_808 - 1024 * 768  # GPT-2 small without its position table
    assert palm_flops_per_token(c) == 6 * n + 12 * 12 * 1024 * 768
    assert peak_flops("cpu") is None


def test_sample_text_is_reproducible():
    from llm_course.tokenizer import Tokenizer

    tok = Tokenizer.train("the cat sat on the mat " * 20, 270)
    model = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
    a = sample_text(model, tok, "the cat", 10, generator=torch.Generator().manual_seed(1))
    b = sample_text(model, tok, "the cat", 10, generator=torch.Generator().manual_seed(1))
    assert a == b and isinstance(a, str)
    with pytest.raises(ValueError, match="prompt"):
        sample_text(model, tok, "", 3)


# --------------------------------------------------------------------------- command line
def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llm_course", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_help():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    for option in ("--corpus", "--steps", "--resume", "--compile", "--fused-adamw", "--precision", "--pretrained"):
        assert option in proc.stdout
    proc = run_cli("train", "--pretrained", "huge")
    assert proc.returncode == 2 and "no pretrained model called 'huge'" in proc.stderr


@pytest.mark.slow
def test_cli_trains_writes_a_checkpoint_and_resumes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 300, encoding="utf-8")
    out = tmp_path / "run"
    common = ["--corpus", str(corpus), "--out", str(out), "--no-progress"]
    proc = run_cli("train", *common, "--vocab-size", "300", "--steps", "6", "--batch-size", "2", "--seq-len", "16",
                   "--eval-interval", "3", "--checkpoint-interval", "3", "--device", "cpu", "--sample", "The")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "validation loss" in proc.stdout and "sample: The" in proc.stdout
    assert (out / "tokenizer.json").exists() and (out / "step_0000006" / "model.safetensors").exists()
    again = run_cli("train", *common)
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr
    resumed = run_cli("train", *common, "--resume", "--device", "cpu")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout and "step 6 of 6" in resumed.stdout


# --------------------------------------------------------------------------- GPU
@pytest.mark.cuda
def test_cuda_fast_path_bf16_compile_fused(tmp_path):
    """bf16 autocast, fused attention, torch.compile and fused AdamW together; MFU is reported."""
    model = Transformer(model_config(use_fused_attention=True), generator=torch.Generator().manual_seed(0)).cuda()
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=6, lr=3e-3, warmup_steps=2, eval_interval=3,
                         eval_batches=1, compile=True, fused_adamw=True, checkpoint_interval=3)  # fmt: skip
    trainer = Trainer(model, config, tokens(3000), tokens(400, seed=1), out_dir=tmp_path, log=None)
    assert trainer.use_bf16
    trainer.train()
    assert all(math.isfinite(x) for x in trainer.history["loss"]) and trainer.history["action"] == ["update"] * 6
    assert all(p.dtype == torch.float32 for p in model.parameters())
    resumed = Trainer.resume(tmp_path, tokens(3000), tokens(400, seed=1), device="cuda", log=None)
    assert resumed.step == 6 and isinstance(resumed.optimizer, torch.optim.AdamW)
    if peak_flops("cuda") is not None:
        assert 0 < trainer.mfu(1e6) < 1


def test_flops_per_token_counts_only_the_routed_experts():
    from dataclasses import replace

    from llm_course.transformer import count_active_parameters, count_parameters, tiny

    dense = tiny(256)
    moe = replace(dense, n_experts=8, experts_per_token=2)
    idle = count_parameters(moe) - count_active_parameters(moe)
    assert idle == dense.n_layers * 6 * (2 * dense.d_model * dense.d_ff + (dense.d_ff + dense.d_model) * dense.bias)
    # The routed experts and the router count; the six idle experts of each layer do not.
    assert palm_flops_per_token(moe) == palm_flops_per_token(dense) + 6 * (count_active_parameters(moe) - count_parameters(dense))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_loss_compiles_to_one_graph(precision):
    """Trainer.compute_loss (forward under autocast + the course's cross-entropy): no graph break."""
    import torch._dynamo as dynamo

    trainer = make_trainer(precision=precision)
    batch = trainer.get_batch()
    dynamo.reset()
    try:
        out = dynamo.explain(trainer.compute_loss)(batch)
    finally:
        dynamo.reset()
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason)[:200] for r in out.break_reasons]


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989),
        ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L4", 121), ("NVIDIA L40", 181), ("NVIDIA L40S", 362), ("NVIDIA A10", 125),
        ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 4090", None), ("Tesla T4", None),
    ],
)  # fmt: skip
def test_peak_flops_matches_whole_card_names(name, tflops):
    from llm_course.trainer import peak_flops_for_name

    got = peak_flops_for_name(name)
    assert got == (None if tflops is None else tflops * 1e12)


def test_precision_choices_and_tf32():
    with pytest.raises(ValueError, match='"tf32"'):
        TrainConfig(precision="fp16")
    before = torch.get_float32_matmul_precision()
    trainer = make_trainer(precision="tf32")
    assert not trainer.use_bf16  # tf32 keeps float32 tensors; on a CPU it is plain fp32
    assert torch.get_float32_matmul_precision() == before  # the CPU's matmul precision is left alone
    if torch.cuda.is_available():
        model = Transformer(model_config(), generator=torch.Generator().manual_seed(0)).cuda()
        Trainer(model, TrainConfig(batch_size=2, seq_len=16, precision="tf32"), tokens(3000), log=None)
        assert torch.get_float32_matmul_precision() == "high"
        Trainer(model, TrainConfig(batch_size=2, seq_len=16, precision="fp32"), tokens(3000), log=None)
        assert torch.get_float32_matmul_precision() == "highest"
        torch.set_float32_matmul_precision(before)
