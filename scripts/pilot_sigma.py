"""Issue 20's blinded seed pilot: print the seed noise of log Δloss, and nothing else.

    qsens run suites/gutenberg-pilot.yaml --results results/gutenberg-pilot
    python scripts/pilot_sigma.py results/gutenberg-pilot

Two readouts, per bit width and pooled (qsens.analysis.seed_sigma):
- `pooled_seed_sd`: the seed-to-seed SD of log Δ at fixed (size, arm, D, quantizer, eval), its 95% chi-square
  interval and degrees of freedom;
- `trajectory_noise`: that spread split along a seed's trajectory into checkpoint noise σ (around the seed's own
  line in log D), the per-seed slope SD and intercept SD, and the seed components τ_slope, τ_intercept beyond σ.
No group mean, slope mean or stable-vs-cooled contrast is printed or computed, so the design can be amended before
anyone sees the effect it must detect.
"""

import json
import sys

from qsens.analysis.seed_sigma import pooled_seed_sd, trajectory_noise
from qsens.store import ResultStore

if len(sys.argv) != 2:
    sys.exit("usage: python scripts/pilot_sigma.py RESULTS_FOLDER")
cells = ResultStore(sys.argv[1]).cells()
for row in pooled_seed_sd(cells, by="bits") + pooled_seed_sd(cells, by=None):
    print(json.dumps({"readout": "pooled_seed_sd"} | row))
for row in trajectory_noise(cells, by="bits") + trajectory_noise(cells, by=None):
    print(json.dumps({"readout": "trajectory_noise"} | row))
