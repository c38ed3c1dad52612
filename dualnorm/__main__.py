"""``python -m dualnorm``: the same as the ``dualnorm`` command."""

import sys

from dualnorm.cli import main

sys.exit(main())
