"""`python -m tart.dash` runs the console like the `tart-dash` script."""

import sys

from .app import main

sys.exit(main())
