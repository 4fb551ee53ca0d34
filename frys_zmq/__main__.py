"""``python -m frys_zmq``: the ``frys-zmq`` command line tool."""

from ._cli import main

raise SystemExit(main())
