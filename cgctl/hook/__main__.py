"""``python -m cgctl.hook [OPTIONS] DRIVER ARGS...``: what the installed hook script runs."""
import sys

from cgctl.hook.main import main

sys.exit(main(sys.argv[1:]))
