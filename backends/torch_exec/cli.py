"""``synth run``: run a schedule on a real model, one process per rank, and report what was measured.

``synth run schedule.json --model tiny-gpt --steps N [--nproc P]`` starts P local processes
(gloo on CPU, or NCCL with ``--device cuda``), or, when torchrun started it, runs as torchrun's
rank. It prints the loss and step time of every step and each rank's peak saved-activation
bytes (and ``torch.cuda.max_memory_allocated`` on CUDA); ``--trace FILE`` writes a Chrome trace
of the last step of the real run, laid out like ``synth show --trace``'s simulated one;
``--simulate`` prints ``ir.simulate``'s step for the schedule the ranks ran, on the run's own
action times, next to the measured one.
``synth/cli/__init__.py`` only declares the subcommand; everything else is here. Torch is imported only
when the command runs, so declaring it keeps ``synth show`` fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ir import Schedule, ScheduleError
from ir.files import check_writable
from synth.costs.args import int_at_least

__all__ = ["add_run_arguments", "run_command"]

_GPT_OPTIONS = ("layers", "hidden", "heads", "seq_len", "vocab", "dropout")
SIMULATE_DRAWS = 20  # --simulate: simulations drawing the run's action times


# --check-grads: torch.allclose's rule, |got - expected| <= atol + rtol |expected|, at fp32 rounding of
# a pipelined sum in another order (measured differences are below 1.2e-7; issue 18)
CHECK_RTOL, CHECK_ATOL = 1e-5, 1e-6

# The least --timeout: starting the ranks and their process group alone takes a few seconds.
MIN_TIMEOUT = 5.0
_positive_int = int_at_least(1)


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _learning_rate(text: str) -> float:
    value = _number(text, "a learning rate, a finite number > 0 (e.g. 0.05)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the learning rate must be > 0 (a negative or zero one does not train), "
                                         f"got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, "a dropout probability in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"dropout must be in [0, 1), got {text!r}")
    return value


def _timeout(text: str) -> float:
    value = _number(text, "seconds")
    if value < MIN_TIMEOUT:
        raise argparse.ArgumentTypeError(f"--timeout {text}: below {MIN_TIMEOUT:g} s the ranks cannot even start "
                                         f"their process group; give at least {MIN_TIMEOUT:g}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``synth run``'s arguments on ``parser``."""
    parser.add_argument("file", type=Path, nargs="?", help="a saved schedule (.json or torch .csv)")
    parser.add_argument("--baseline", help="build this library schedule instead of reading a file")
    parser.add_argument("-p", "--ranks", type=_positive_int, default=2, help="ranks, with --baseline (default 2)")
    parser.add_argument("-m", "--microbatches", type=_positive_int, default=4,
                        help="microbatches, with --baseline (default 4)")
    parser.add_argument("--model", default="tiny-gpt",
                        help="model to run: tiny-gpt (default, a small causal GPT), hf:CONFIG.json (a Hugging Face "
                        "causal LM built from a config, random weights, no download; needs transformers) or "
                        "module:function (a function returning a backends.torch_exec.ModelSpec)")
    parser.add_argument("--steps", type=_positive_int, default=3, help="training steps (default 3)")
    parser.add_argument("--nproc", type=_positive_int, help="processes to start (default and only allowed value: the "
                        "schedule's ranks); ignored under torchrun")
    parser.add_argument("--batch-size", type=_positive_int, help="sequences per step (default 2 per microbatch)")
    parser.add_argument("--layers", type=_positive_int, help="tiny-gpt blocks (default: one per stage)")
    parser.add_argument("--hidden", type=_positive_int, help="tiny-gpt width (default 32)")
    parser.add_argument("--heads", type=_positive_int, help="tiny-gpt attention heads (default 2)")
    parser.add_argument("--seq-len", type=_positive_int, help="tokens per sequence, tiny-gpt or hf: (default 16)")
    parser.add_argument("--vocab", type=_positive_int, help="tiny-gpt vocabulary (default 64)")
    parser.add_argument("--dropout", type=_fraction, help="tiny-gpt dropout (default 0)")
    parser.add_argument("--lr", type=_learning_rate, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "host-adam"), default="sgd",
                        help="sgd (default), adam, or host-adam: Adam's state and fp32 master weights kept on the "
                        "host, the update run there (ChronosPipe's model-state offload)")
    parser.add_argument("--seed", type=int, default=0, help="dropout seed base (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (gloo) or cuda (NCCL, one GPU per rank); default cpu")
    parser.add_argument("--timeout", type=_timeout, default=60.0,
                        help=f"seconds any wait may take, at least {MIN_TIMEOUT:g} (starting the process group "
                        "alone takes seconds) (default 60)")
    parser.add_argument("--slice-lengths", default="auto",
                        help="tokens of each sequence slice: 'auto' (default: the cut the schedule records in "
                        "meta.slice_bounds, e.g. the cost model's compute-balanced one, scaled to the model's "
                        "sequence; else equal slices), 'equal', or k comma-separated counts such as 7,5,4")
    parser.add_argument("--check-grads", action="store_true",
                        help=f"compare the first step's loss and gradients with a single-process run of the same "
                        f"model and batch; print the largest difference and exit 1 above rtol {CHECK_RTOL:g}, "
                        f"atol {CHECK_ATOL:g}")
    parser.add_argument("--trace", type=Path, help="write a Chrome trace of the last step's real run here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --trace file")
    parser.add_argument("--simulate", action="store_true",
                        help="after the run, print ir.simulate's step for the lowered schedule the ranks ran, on "
                        "this run's own times (steps after the first): each kind of action at its mean time, and "
                        f"the mean of {SIMULATE_DRAWS} simulations drawing each action's time from the run's "
                        "(its spread: on coupled ranks a late action makes the other wait), next to the measured "
                        "mean step")


def _load(args: argparse.Namespace) -> tuple[Schedule, str]:
    if args.baseline and args.file is not None:
        raise ValueError(f"give a schedule FILE or --baseline NAME, not both ({args.file} and --baseline "
                         f"{args.baseline})")
    if args.baseline:
        from synth.baselines import build

        return build(args.baseline, args.ranks, args.microbatches), args.baseline
    if args.file is None:
        raise ValueError("give a schedule FILE (.json or torch .csv) or --baseline NAME")
    from ir.jsonio import load
    from ir.torch_csv import read_torch_csv

    schedule = read_torch_csv(args.file) if args.file.suffix.lower() == ".csv" else load(args.file)
    return schedule, str(args.file)


def _model(args: argparse.Namespace, schedule: Schedule) -> Any:
    from backends.torch_exec.model import model_spec

    options = {name: getattr(args, name) for name in _GPT_OPTIONS if getattr(args, name) is not None}
    if args.model.startswith("hf:"):
        from backends.torch_exec.hf import hf_spec

        extra = [name for name in options if name != "seq_len"]
        if extra:
            raise ValueError(f"--{', --'.join(extra)} only apply to tiny-gpt; an hf: model's size is its config's")
        return hf_spec(Path(args.model[3:]), seq_len=options.get("seq_len", 16), name=args.model)
    if args.model == "tiny-gpt":
        options.setdefault("layers", schedule.num_stages)
        return model_spec(args.model, **options)
    if options:
        raise ValueError(f"--{', --'.join(options)} only apply to tiny-gpt")
    if ":" in args.model:
        return _user_model(args.model)
    return model_spec(args.model, **options)


def _user_model(text: str) -> Any:
    """``module:function``: the `ModelSpec` the function returns (the module imported from the
    current directory or the Python path, by every rank alike)."""
    import importlib
    import os

    from backends.torch_exec.model import ModelSpec

    module_name, _, function = text.partition(":")
    if not module_name or not function:
        raise ValueError(f"--model {text!r}: give module:function, e.g. mymodels:build_spec")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # spawned ranks inherit sys.path, so they import it too
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {text!r}: cannot import {module_name!r} ({exc}); run from its directory or put "
                         "it on PYTHONPATH") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"--model {text!r}: {module_name} has no function {function!r}")
    spec = fn()
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"--model {text!r}: {function}() returned a {type(spec).__name__}, not a ModelSpec; build "
                         "one with backends.torch_exec.sequential_spec(name, build, loss_fn, make_batch) or "
                         "ModelSpec(...)")
    return spec


def _slice_lengths(text: str, schedule: Schedule, spec: Any) -> tuple[int, ...] | None:
    """``--slice-lengths`` as token counts (None: equal slices)."""
    from backends.torch_exec.executor import slice_lengths

    if text == "equal" or schedule.k == 1 or spec.seq_len is None:
        return None
    if text == "auto":
        return slice_lengths(schedule, spec.seq_len)
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--slice-lengths {text!r}: give 'auto', 'equal' or k comma-separated token counts "
                         "(e.g. 7,5,4)") from None


def run_command(args: argparse.Namespace) -> int:
    """``synth run``; returns the exit code (errors are printed, never raised)."""
    from backends.torch_exec.executor import ExecutorError, prepare_schedule
    from backends.torch_exec.launch import RunFailed, torchrun_rank
    from backends.torch_exec.worker import RunConfig

    try:
        schedule, label = _load(args)
        spec = _model(args, schedule)
        found = torchrun_rank()
        under_torchrun = found is not None
        nproc = found[1] if under_torchrun else schedule.p if args.nproc is None else args.nproc
        batch = args.batch_size or 2 * schedule.m
        lengths = _slice_lengths(args.slice_lengths, schedule, spec)
        # checked before any process starts; the ranks lower it the same way (early receives but on NCCL)
        lowered = prepare_schedule(schedule, spec, world_size=nproc, batch_size=batch, lengths=lengths,
                                   early_recvs=args.device != "cuda")
        if args.trace is not None:
            check_writable(args.trace, args.force)
        cfg = RunConfig(schedule, spec, batch, steps=args.steps, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
                        timeout=args.timeout, keep_grads=args.check_grads,
                        record_spans=args.trace is not None or args.simulate, device=args.device,
                        slice_lengths=lengths)
        results = _run_torchrun(cfg) if under_torchrun else _run_local(cfg, nproc)
    except (ExecutorError, ScheduleError, ValueError, OSError) as err:
        print(f"synth run: {err}", file=sys.stderr)
        return 1
    except RunFailed as err:
        print(f"synth run: {err}", file=sys.stderr)
        return 1
    if results is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    _report(label, cfg, results)
    if args.trace is not None:
        from backends.torch_exec.trace import write_run_trace

        write_run_trace([r.steps[-1] for r in results], args.trace, overwrite=args.force, name=f"synth run {label}")
        print(f"wrote {args.trace} (last step of the real run; `synth show ... --trace` draws the simulated one)")
    if args.simulate:
        _simulate_report(cfg, lowered, results)
    if args.check_grads:
        return _check_grads(cfg, results)
    return 0


def _check_grads(cfg: Any, results: list) -> int:
    """Compare the first step with a single-process run (same weights, batch and dropout seeds)."""
    import torch

    from backends.torch_exec.reference import reference_step

    schedule = cfg.schedule
    ref = reference_step(cfg.model, cfg.batch_size, num_stages=schedule.num_stages, m=schedule.m, k=schedule.k,
                         per_unit=True, seed=cfg.seed, data_seed=cfg.data_seed, stage_layers=cfg.stage_layers,
                         lengths=cfg.slice_lengths)
    got = {name: g for r in results for name, g in (r.grads or {}).items()}
    loss = next(s.loss for r in results for s in r.steps[:1] if s.loss is not None)
    worst_abs = worst_share = 0.0  # the largest |difference|, and the largest difference / its allowance
    bad = []
    missing = sorted(set(ref.grads) - {n for n, g in got.items() if g is not None})
    for name, expected in ref.grads.items():
        g = got.get(name)
        if g is None or expected is None:
            continue
        diff = (g.double() - expected.double()).abs()
        worst_abs = max(worst_abs, float(diff.max()))
        allowed = CHECK_ATOL + CHECK_RTOL * expected.double().abs()
        worst_share = max(worst_share, float((diff / allowed).max()))
        if not torch.all(diff <= allowed):
            bad.append(name)
    loss_rel = abs(loss - ref.loss) / max(abs(ref.loss), 1e-30)
    ok = not bad and not missing and loss_rel <= CHECK_RTOL
    print(f"check-grads: {len(ref.grads)} gradient tensors against one process: largest difference "
          f"{worst_abs:.3g} ({worst_share:.1%} of the allowed atol + rtol |expected|), loss {loss:.6f} vs "
          f"{ref.loss:.6f}; tolerance rtol {CHECK_RTOL:g}, atol {CHECK_ATOL:g}: {'ok' if ok else 'FAILED'}")
    if missing:
        print(f"check-grads: no gradient for {', '.join(missing[:5])}", file=sys.stderr)
    if bad:
        print(f"check-grads: above the tolerance: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}",
              file=sys.stderr)
    return 0 if ok else 1


def _run_local(cfg: Any, nproc: int) -> list:
    from backends.torch_exec.launch import spawn
    from backends.torch_exec.worker import run_rank

    return spawn(nproc, run_rank, cfg, device=cfg.device, timeout=cfg.timeout)


def _run_torchrun(cfg: Any) -> list | None:
    import torch.distributed as dist

    from backends.torch_exec.launch import init_from_env
    from backends.torch_exec.worker import run_rank

    rank, world_size, device = init_from_env(cfg.device, cfg.timeout)
    try:
        result = run_rank(cfg, rank=rank, world_size=world_size, device=device)
        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(result, gathered, dst=0)
    finally:
        dist.destroy_process_group()
    return gathered


def _report(label: str, cfg: Any, results: list) -> None:
    schedule, spec = cfg.schedule, cfg.model
    unique = {id(p): p for layer in spec.build_layers() for p in layer.parameters()}  # a tied tensor once
    params = sum(p.numel() for p in unique.values())
    print(f"{label}: p={schedule.p} stages={schedule.num_stages} m={schedule.m} k={schedule.k} "
          f"placement={schedule.placement.kind.value}")
    print(f"model {spec.name}, batch {cfg.batch_size}, {cfg.steps} step(s), {cfg.optimizer} lr {cfg.lr:g}, "
          f"{'NCCL on cuda' if cfg.device == 'cuda' else 'gloo on cpu'}, {schedule.p} process(es), "
          f"{params} parameters")
    print("step  loss       time ms")
    for n in range(cfg.steps):
        steps = [r.steps[n] for r in results]
        loss = next((s.loss for s in steps if s.loss is not None), float("nan"))
        print(f"{n:>4}  {loss:<9.6f}  {max(s.seconds for s in steps) * 1e3:9.2f}")
    print("rank  stages      peak saved activations" + ("  cuda max allocated" if cfg.device == "cuda" else ""))
    for r in results:
        peak = max(s.peak_bytes for s in r.steps)
        line = f"{r.rank:>4}  {','.join(map(str, r.stages)):<10}  {_bytes(peak):>22}"
        if cfg.device == "cuda":
            line += f"  {_bytes(max(s.cuda_peak_bytes or 0 for s in r.steps)):>19}"
        print(line)


def _simulate_report(cfg: Any, lowered: Schedule, results: list) -> None:
    """``ir.simulate`` of ``lowered`` (the schedule as the ranks ran it) on the run's own times,
    against the measured step (means over the steps after the first, or over the one step)."""
    import statistics

    from backends.torch_exec.run_costs import costs_from_run, sampled_makespans
    from ir import Costs, simulate

    schedule = cfg.schedule
    skip = 1 if cfg.steps > 1 else 0
    records = [r.steps for r in results]
    # what the run did not do stays 0; comm (latency after a post) is not measured by a run: 0
    base = Costs.uniform(schedule.num_stages, schedule.k, f=0, b=0, w=0, act=0, copy_stream=cfg.device == "cuda")
    measured = statistics.fmean(max(s.seconds for s in steps) for steps in list(zip(*records, strict=True))[skip:])
    on_means = simulate(lowered, costs_from_run(lowered, records, base, skip=skip)).makespan
    drawn = statistics.fmean(sampled_makespans(lowered, records, base, draws=SIMULATE_DRAWS, skip=skip))
    over = f"step {skip}" if cfg.steps - skip == 1 else f"steps {skip}-{cfg.steps - 1}"
    print(f"simulated on this run's times ({over}; comm latency 0): {on_means:.2f} ms at each action's mean time, "
          f"{drawn:.2f} ms drawing each action's time from the run's ({SIMULATE_DRAWS} draws); measured "
          f"{measured * 1e3:.2f} ms")
    if cfg.device == "cuda":
        print("(on CUDA a run with spans synchronizes after every action, so these times are of a serialized run)")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
