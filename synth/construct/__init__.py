"""Memory-aware constructive list schedulers (the Zero Bubble paper's heuristic family,
Qi et al., arXiv 2401.10241, sec. 3): priorities among ready B, F and W, W filling idle time,
a forward admitted only within the memory cap, for every placement, slices, recompute and
offload. The fast starting point of ``synth.search``; ``synth.block`` and ``synth.horizon``
improve on it.

Modules: ``tables`` (flat cost tables, `Policy`), ``engine`` (one event-driven run), ``copies``
(its copy stream: what to offload and reload, when), ``reserve`` (room kept so runs cannot
deadlock), ``variants`` (which policies to try), ``build`` (`construct`, `Construction`).
"""

from synth.construct.build import Construction, construct, lower_bound, timeline_matches
from synth.construct.tables import Policy

__all__ = ["Construction", "Policy", "construct", "lower_bound", "timeline_matches"]
