"""``python -m etl_assets.cli``: the same as the ``etl-assets`` console script."""

import sys

from etl_assets.cli import console_main

sys.exit(console_main())
