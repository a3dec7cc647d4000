"""`python -m fractal_hostd` is `fractal-hostd`."""

import sys

# Before anything else: from here on a signal cannot kill the service without its report.
from fractal_hostd.process import early_signals

if sys.argv[1:2] == ["run"]:
    early_signals.install()
    # As in cli.main: imports without the cyclic collector (cli.pause_collector_for_imports).
    import gc

    gc.disable()

from fractal_hostd.cli import main

sys.exit(main())
