"""`python -m fractal_hostd` is `fractal-hostd`."""

import sys

# Before anything else: from here on a signal cannot kill the service without its report.
from fractal_hostd.process import early_signals

if sys.argv[1:2] == ["run"]:
    early_signals.install()

from fractal_hostd.cli import main

sys.exit(main())
