"""``python -m transcoders`` only says where the command line is.

The ``transcoders`` command loads a model to harvest from, so it lives in ``circuits``
(``circuits.transcoders_cli``): the ``transcoders`` library never imports ``circuits``.
"""

import shlex
import sys

args = shlex.join(sys.argv[1:]) or "--help"
print(f"python -m transcoders is not a command: run `transcoders {args}` or `python -m circuits transcoders {args}` "
      "(the command line loads a model, so it lives in circuits).", file=sys.stderr)
sys.exit(2)
