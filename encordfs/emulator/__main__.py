"""``python -m encordfs.emulator [...]``: the same as ``encordfs emulator [...]`` (see ``cli``)."""

import sys

from encordfs.emulator.cli import main

sys.exit(main())
