"""``python -m mytimerd`` runs the daemon."""

import gc
import sys

# No garbage collection while the modules load (main() turns it back on once
# serving): it would run some 30 times, about 4 ms of the start, and free
# next to nothing.
gc.disable()

from .daemon import main  # noqa: E402 (after gc.disable())

sys.exit(main())
