"""``python -m srlib``: the same as the ``srlib`` command."""

import sys

from .cli import main

sys.exit(main())
