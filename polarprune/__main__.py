"""``python -m polarprune`` (and ``torchrun -m polarprune``)."""

import sys

from .cli import main

sys.exit(main())
