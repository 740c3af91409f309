"""The block model's vocabulary: its options, its passes and the memory they hold.

``synth.block.spec`` builds the model's integer data (`BlockSpec`) from these and re-exports them;
the solvers (``synth.block.cpsat``, ``synth.block.milp``) and the tiler read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir import Action, Op

__all__ = ["MAX_GROUP", "BlockError", "BlockOptions", "Lifespan", "Pass"]

MAX_GROUP = 4  # microbatches per block: the model grows as u^2 (memory instants times lifespans)


class BlockError(ValueError):
    """No building block satisfies the options (e.g. a cap below every block's memory)."""


@dataclass(frozen=True, slots=True)
class BlockOptions:
    """What the block model may do.

    Attributes:
        split_backward: B and W as separate passes (else one BW pass).
        recompute: the solver may recompute a stage (k = 1 only).
        offload: the solver may offload a stage's activations to host (k = 1 only).
        mem_cap: bytes per rank, or ``None`` for no cap.
        ticks: target ticks for the longest pass (time resolution; durations round up).
        time_limit: seconds for the whole block search (CP-SAT), or for each solve (MILP).
        workers: CP-SAT search workers (threads for HiGHS/CBC).
        memory: "exact" (the periodic memory curve at every allocation instant) or "ceil" (the
            Controllable Memory paper's bound: each lifespan counts ceil(lifespan / T) times).
        group: u, the microbatches per block (1 to 4): the block holds u copies of every pass and
            repeats every T ticks, so its average period is T / u.
        m: the microbatches the block will be tiled over, or ``None``. With m the objective is the
            tiled makespan (about ``(ceil(m / u) - 1) T + length``, see ``synth.block.objective``),
            else the smallest T, then the shortest block.
    """

    split_backward: bool = True
    recompute: bool = False
    offload: bool = False
    mem_cap: float | None = None
    ticks: int = 60
    time_limit: float = 2.0
    workers: int = 2
    memory: str = "exact"
    group: int = 1
    m: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.group, bool) or not isinstance(self.group, int) or not 1 <= self.group <= MAX_GROUP:
            raise BlockError(f"a block holds 1 to {MAX_GROUP} microbatches, got group={self.group!r}")
        if self.m is not None and (isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1):
            raise BlockError(f"microbatches must be a positive integer or None, got m={self.m!r}")


@dataclass(frozen=True, slots=True, order=True)
class Pass:
    """One pass of the block: ``op`` of stage ``stage``, slice ``slice``, of the block's copy
    ``micro`` (microbatch ``micro`` of the block's u; 0 in a one-microbatch block)."""

    stage: int
    slice: int
    op: Op
    micro: int = 0

    def action(self, microbatch: int = 0) -> Action:
        return Action(self.op, self.stage, microbatch, self.slice)

    @property
    def name(self) -> str:
        return f"s{self.stage}_j{self.slice}_{self.op.value}" + (f"_u{self.micro}" if self.micro else "")

    def key(self) -> list:
        """The JSON form: ``[stage, slice, op]``, plus ``micro`` when it is not 0."""
        return [self.stage, self.slice, self.op.value] + ([self.micro] if self.micro else [])

    @classmethod
    def from_key(cls, v: list) -> Pass:
        return cls(int(v[0]), int(v[1]), Op(v[2]), int(v[3]) if len(v) > 3 else 0)


@dataclass(frozen=True, slots=True)
class Lifespan:
    """``units`` of memory held on ``rank`` from the start of ``begin`` to the end of ``end``,
    in the variant ``variant`` of stage ``stage``: "keep" (neither recomputed nor offloaded),
    "recompute" or "offload"."""

    rank: int
    stage: int
    variant: str
    begin: Pass
    end: Pass
    units: int
