"""``python -m encordfs`` is the ``encordfs`` command."""

import sys

from encordfs.cli import main

sys.exit(main())
