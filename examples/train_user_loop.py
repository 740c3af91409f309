"""Train a model with a pipesynth schedule inside your own training loop (AdamW, clipping, LR schedule).

    torchrun --nproc_per_node 2 examples/train_user_loop.py                     # zb-h1 on tiny GPT
    torchrun --nproc_per_node 2 examples/train_user_loop.py --schedule s.json   # a synthesized schedule
    torchrun --nproc_per_node 2 examples/train_user_loop.py --hf config.json    # a Hugging Face causal LM

Every rank builds the same model (same seed), keeps its own stages, and runs the same loop; the
rank that holds the last stage prints the loss. Swap in your data loader, model and optimizer.
"""

from __future__ import annotations

import argparse
import datetime

import torch
import torch.distributed as dist

from backends.torch_exec import PipelineSchedule, hf_layers
from backends.torch_exec.model import GPTConfig, gpt_layers, gpt_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", help="a saved schedule (.json); default: the library's zb-h1")
    parser.add_argument("--hf", help="a Hugging Face config JSON (needs transformers); default: tiny GPT")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args()

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # "nccl" with one GPU per rank
    p = dist.get_world_size()
    if args.schedule:
        from ir.jsonio import load

        schedule = load(args.schedule)
    else:
        from synth.baselines import build

        schedule = build("zb-h1", p, args.microbatches)

    torch.manual_seed(0)  # every rank builds the same weights
    if args.hf:
        from backends.torch_exec.hf import causal_lm_loss, from_config

        model = from_config(args.hf, seed=0)
        layers, loss_fn, vocab = hf_layers(model), causal_lm_loss, model.config.vocab_size
    else:
        cfg = GPTConfig(layers=2 * schedule.num_stages)
        layers, loss_fn, vocab = gpt_layers(cfg), gpt_loss, cfg.vocab
    pipe = PipelineSchedule(schedule, layers, loss_fn=loss_fn, pre=1, post=1)

    optimizer = torch.optim.AdamW(pipe.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    data = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        # your data loader here: a batch of m microbatches' worth of sequences (every rank may load it;
        # only the first stage's rank needs the inputs, only the last stage's the targets)
        tokens = torch.randint(0, vocab, (2 * schedule.m, 17), generator=data)
        tokens[:, 1::2] = tokens[:, 0:-1:2]  # a learnable pattern: every odd token repeats the one before
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        optimizer.zero_grad()
        loss = pipe.step(inputs, target=targets)
        norm = pipe.clip_grad_norm_(1.0)  # the global norm over every rank's gradients
        optimizer.step()
        scheduler.step()
        if loss is not None and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}  grad norm {norm.item():.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
