"""Fill the measured numbers of the documents from the committed result files (``bench/rendering``).

    python bench/render.py            # rewrite the documents in place (atomically)
    python bench/render.py --check    # exit 1 listing the blocks that differ (CI)
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the rendering package, and polarprune of this checkout

from rendering import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
