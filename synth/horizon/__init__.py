"""The full-horizon method: one job per pass of every microbatch.

- ``synth.horizon.spec``: the model's data (`Horizon`: jobs, precedences, lifespans, budgets),
  hints from schedules, the model check and the decode, shared by both solvers.
- ``synth.horizon.rows``: the tightening rows (the cap as precedences, load cuts) and the longest
  paths over the model's rows.
- ``synth.horizon.cpsat``: the CP-SAT model (`solve_horizon`) and the rank relaxation bound.
- ``synth.horizon.lns``: large-neighbourhood search from an incumbent (`solve_lns`).
- ``synth.horizon.milp``: the same model as a MILP (PuLP with HiGHS or CBC) in a child process;
  its rows are built in ``synth.horizon.milp_model``.
- ``synth.horizon.bounds``: analytic lower bounds, independent of any solver.
- ``synth.horizon.refine``: the refinement step the search runs, and the bound it reports.

Nothing is imported here: the MILP child must not import ortools, and importing this package
must not pull in a solver.
"""
