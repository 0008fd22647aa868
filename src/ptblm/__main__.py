"""`python -m ptblm`: the `ptblm` command, as torchrun starts it (`torchrun -m ptblm train`)."""

import sys

from .cli import main

sys.exit(main())
