"""``python -m tools.mutation``: run the mutation list (see :mod:`tools.mutation.run`)."""

import sys

from tools.mutation.run import main

sys.exit(main(sys.argv[1:]))
