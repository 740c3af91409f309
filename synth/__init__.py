"""pipesynth's synthesizer: problems and cost model, baseline schedules, the integer
programs and the ``synth`` command. Builds on ``ir``; see DESIGN.md for the parts that
are still to come (cost model, baselines, block and full-horizon models)."""
