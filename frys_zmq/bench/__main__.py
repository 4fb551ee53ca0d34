"""``python -m frys_zmq.bench``: the benchmark, and how the coordinator starts its children."""

import sys

from . import main

# Guarded so that importing this module (as the package's import test does) runs nothing.
if __name__ == "__main__":
    sys.exit(main())
