"""``python -m logplex.admin.cli``: the ``logplex`` command."""

import sys

from logplex.admin.cli.program import main

sys.exit(main())
