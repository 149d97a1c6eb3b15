"""``python -m transcoders`` (and ``torchrun -m transcoders``) runs the command line."""

import sys

from transcoders.cli import main

sys.exit(main())
