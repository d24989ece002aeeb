"""`python -m batchrouter.simulator PORT CONFIG_JSON`: the simulator process `running_simulator` starts.

Users start it with `batchrouter simulate`; this entry point lets the engine start one without going
through the command line face.
"""

import sys

from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator.server import serve

if len(sys.argv) != 3:
    sys.exit("usage: python -m batchrouter.simulator PORT CONFIG_JSON")
serve(SimulatorConfig.model_validate_json(sys.argv[2]), port=int(sys.argv[1]))
