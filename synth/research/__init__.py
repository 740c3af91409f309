"""Answers one solve does not give: the memory/throughput frontier (`frontier`), the largest model
that trains at a throughput floor (``synth.research.max_model``) and the search over the knobs a
user picks by hand (``synth.research.knobs``). Each runs ``synth.search.synthesize`` several times
and reuses what earlier solves found."""
