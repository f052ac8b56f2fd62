"""``python -m gateway --config gateway.yaml``."""

import sys

from gateway.cli import main

sys.exit(main())
