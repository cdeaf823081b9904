#!/usr/bin/env python
"""Rebuild the bundled tiny target/draft pair: ``python scripts/train_tiny.py [--out DIR] ...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from minedraft.train_tiny import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
