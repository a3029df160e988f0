"""``python -m mytimerd`` runs the daemon."""

import sys

from .start import main

sys.exit(main())
