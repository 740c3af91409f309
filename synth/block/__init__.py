"""The building-block method (Controllable Memory, arXiv 2405.15362): u microbatches' passes with
offsets, repeated every period.

- ``synth.block.passes``: the vocabulary (`BlockOptions`, `Pass`, `Lifespan`, `BlockError`).
- ``synth.block.ticks``: the time and memory resolution (exact ticks, the rounding they cost).
- ``synth.block.spec``: the model's data in integers (`BlockSpec`, `block_spec`), u copies of
  every pass, shared by both solvers.
- ``synth.block.period``: the period search both solvers run, the least memory a block holds and
  the sequential block.
- ``synth.block.cpsat``: the CP-SAT model (`solve_block`).
- ``synth.block.objective``: the objective that sees m (tiled makespan; larger periods).
- ``synth.block.milp``: the same model as a MILP (PuLP with HiGHS or CBC) in a child process.
- ``synth.block.groups``: u = 1..4 within one time limit, the best block for m (`solve_blocks`).
- ``synth.block.tile``: tile a block over m microbatches and squeeze it into a `Schedule`.

Nothing is imported here: the MILP child must not import ortools, and importing this package
must not pull in a solver.
"""
