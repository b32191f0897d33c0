"""``python -m dq_plugins``: the ``dq`` command line (see :mod:`dq_plugins.cli`)."""

from dq_plugins.cli import main

raise SystemExit(main())
