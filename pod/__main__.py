"""``python -m pod config.yaml`` (the seed's invocation)."""

import sys

from pod.cli import main

sys.exit(main())
