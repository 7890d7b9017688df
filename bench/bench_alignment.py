"""Time a PPO step (rollout + update) against a DPO step on the same model, and compare their peak memory.

The same LoRA policy (`transformer.tiny`-shaped by default, random weights, wider with --d-model /
--layers; adapters on every linear layer and the head, so the reference is the policy with its
adapters off) takes one step of each method on a batch of --batch prompts with responses of --new
tokens:
  ppo   `ppo.PPO.step`: sample --new tokens for each prompt (KV cache), score them with a reward
        model (a second transformer with a scalar head), the policy's and the reference's
        log-probabilities and the values, then --epochs passes of minibatch updates
        (--minibatch rows each) of the clipped loss + value loss
  dpo   `dpo.DPOObjective`, one `Trainer.train_step`: --batch pairs (chosen and rejected, prompt + --new tokens each), the
        reference's log-probabilities (no gradients) and the policy's, one update
Each repetition times one step of each (the order alternates). Peak memory, one method at a time,
from building its models to the end of two steps: on CUDA torch.cuda.max_memory_allocated (weights,
activations, optimizer state, the reward model for PPO); on the CPU the peak resident memory of a
fresh subprocess (ru_maxrss) above its resident memory just before building the models (the Python
interpreter and PyTorch themselves are not counted), plus the bytes of weights + gradients + AdamW
state counted from the tensors.

    python bench/bench_alignment.py                        # CPU, tiny model
    python bench/bench_alignment.py --device cuda --d-model 512 --layers 8 --batch 64 --new 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from llm_course import dpo, ppo
from llm_course.lora import apply_lora
from llm_course.quantization import weight_bytes
from llm_course.reward_model import RewardModel
from llm_course.shuffled_batches import ShuffledBatches
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, TransformerConfig
from llm_course.utils import get_device, set_seed

TARGETS = ("w_q", "w_k", "w_v", "w_o", "w1", "w2", "lm_head")
EOS = -1  # an id no model samples: every response has --new tokens, as the DPO pairs do


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32, help="prompts per PPO step = pairs per DPO step")
    p.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    p.add_argument("--new", type=int, default=24, help="response tokens")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatch", type=int, default=16)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--worker", choices=["ppo", "dpo"], help=argparse.SUPPRESS)  # CPU memory, in a subprocess
    return p.parse_args(argv)


def build(args, method: str, device):
    cfg = TransformerConfig(vocab_size=args.vocab, context_length=args.prompt + args.new + 1, d_model=args.d_model,
                            n_layers=args.layers, n_heads=args.heads)  # fmt: skip
    policy = apply_lora(Transformer(cfg, generator=torch.Generator().manual_seed(0)), TARGETS, r=args.r, alpha=2 * args.r)
    policy = policy.to(device).eval()
    g = torch.Generator().manual_seed(1)
    if method == "ppo":
        head = ppo.ValueHead(args.d_model).to(device)
        rm = RewardModel(Transformer(cfg, generator=torch.Generator().manual_seed(2))).to(device).eval()
        torch.nn.init.normal_(rm.head.weight, std=0.1)
        for p in rm.parameters():
            p.requires_grad_(False)
        prompts = torch.randint(1, args.vocab, (args.batch, args.prompt), generator=g).to(device)
        config = ppo.PPOConfig(beta=0.1, lr=1e-4, epochs=args.epochs, minibatch_size=args.minibatch, max_new_tokens=args.new)
        runner = ppo.PPO(policy, head, lambda t, n: rm(t, n), EOS, config, iterations=1000, batch_size=args.batch)
        return (lambda: runner.step(prompts)), (policy, head, rm), runner.trainer.optimizer
    T = args.prompt + args.new
    tokens = torch.randint(1, args.vocab, (2 * args.batch, T), generator=g).to(device)
    mask = torch.zeros(2 * args.batch, T, dtype=torch.bool, device=device)
    mask[:, args.prompt :] = True
    config = TrainConfig(batch_size=2 * args.batch, seq_len=T, max_steps=1000, lr=1e-4, warmup_steps=0, weight_decay=0.0,
                         beta2=0.999, grad_clip=0.0, spike_threshold=0.0, eval_interval=0)  # fmt: skip
    one_batch = ShuffledBatches([(tokens, mask)], 1, lambda items: items[0])  # the same pairs at every step
    trainer = Trainer(policy, config, data=one_batch, objective=dpo.DPOObjective(beta=0.1), log=None)
    return trainer.train_step, (policy,), trainer.optimizer


def state_bytes(modules, opt) -> int:
    """Weights and buffers of every model + gradients + optimizer state."""
    grads = sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.requires_grad)
    moments = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return sum(weight_bytes(m) for m in modules) + grads + moments


def worker(args) -> None:
    """In a fresh process: build one method's models, take two steps, print the memory as JSON."""
    torch.set_num_threads(args.threads)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    step, modules, opt = build(args, args.worker, torch.device("cpu"))
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss": (peak - before) * 1024, "state": state_bytes(modules, opt)}))


def memory(args, method: str, device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step, modules, opt = build(args, method, device)
        step()
        step()
        torch.cuda.synchronize()
        out = {"peak": torch.cuda.max_memory_allocated() - start, "state": state_bytes(modules, opt)}
        del step, modules, opt
        return out
    argv = [a for a in sys.argv[1:]] + ["--worker", method]
    res = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return {"peak": got["rss"], "state": got["state"]}


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    set_seed(0)
    mem = {m: memory(args, m, device) for m in ("ppo", "dpo")}
    steps = {m: build(args, m, device)[0] for m in ("ppo", "dpo")}
    for m in steps:  # warm-up
        steps[m]()
    times = {m: [] for m in steps}
    for rep in range(args.reps):
        for m in (["ppo", "dpo"] if rep % 2 == 0 else ["dpo", "ppo"]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[m]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
    t = {m: statistics.median(v) for m, v in times.items()}
    what = "peak CUDA memory" if device.type == "cuda" else "peak RSS above start"
    print(f"device {device}, d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, batch {args.batch}, "
          f"prompt {args.prompt} + {args.new} tokens, PPO {args.epochs} epochs x minibatch {args.minibatch}, threads {args.threads}")
    print(f"{'method':6} {'step ms':>9} {what + ' MiB':>26} {'weights+grads+AdamW MiB':>24}")
    for m in ("ppo", "dpo"):
        print(f"{m:6} {1e3 * t[m]:9.1f} {mem[m]['peak'] / 2**20:26.1f} {mem[m]['state'] / 2**20:24.2f}")
    print(f"PPO / DPO: time {t['ppo'] / t['dpo']:.2f}x, {what} {mem['ppo']['peak'] / mem['dpo']['peak']:.2f}x, "
          f"state {mem['ppo']['state'] / mem['dpo']['state']:.2f}x")


if __name__ == "__main__":
    main()
