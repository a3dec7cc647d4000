"""`python -m fractal_hostd` is `fractal-hostd`."""

import sys

from fractal_hostd.cli import main

sys.exit(main())
