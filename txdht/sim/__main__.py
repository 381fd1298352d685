"""``python -m txdht.sim``: see ``txdht.sim.cli``."""

import sys

from txdht.sim.cli import main

sys.exit(main())
