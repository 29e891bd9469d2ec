"""`python -m deltaserve.entrypoints.cli`: the `deltaserve` command."""

import sys

from deltaserve.entrypoints.cli.main import main

sys.exit(main())
