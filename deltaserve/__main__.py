"""`python -m deltaserve`: the `deltaserve` command."""

import sys

from deltaserve.entrypoints.cli.main import main

sys.exit(main())
