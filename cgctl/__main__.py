"""``python -m cgctl``: the same as the ``cgctl`` command."""
import sys

from cgctl.cli.fast import main

sys.exit(main())
