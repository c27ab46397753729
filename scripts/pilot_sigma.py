"""Issue 20's blinded seed pilot: print the pooled seed-to-seed SD of log Δloss, and nothing else.

    qsens run suites/gutenberg-pilot.yaml --results results/gutenberg-pilot
    python scripts/pilot_sigma.py results/gutenberg-pilot

Per bit width and pooled: SD, its 95% chi-square interval, degrees of freedom, groups (size, arm, D, quantizer,
eval) with >= 2 seeds. No group mean and no stable-vs-cooled contrast is printed or computed
(qsens.analysis.seed_sigma), so the design can be amended before anyone sees the effect it must detect.
"""

import json
import sys

from qsens.analysis.seed_sigma import pooled_seed_sd
from qsens.store import ResultStore

if len(sys.argv) != 2:
    sys.exit("usage: python scripts/pilot_sigma.py RESULTS_FOLDER")
cells = ResultStore(sys.argv[1]).cells()
for row in pooled_seed_sd(cells, by="bits") + pooled_seed_sd(cells, by=None):
    print(json.dumps(row))
