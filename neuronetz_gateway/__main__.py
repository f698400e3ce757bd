"""``python -m neuronetz_gateway``: the ``neuronetz-gateway`` command."""

import sys

from neuronetz_gateway.cli import main

sys.exit(main())
