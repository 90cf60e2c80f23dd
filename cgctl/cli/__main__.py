"""``python -m cgctl.cli``: the command, run in this process."""
import sys

from cgctl.cli.main import main

sys.exit(main())
