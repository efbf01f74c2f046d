"""`python -m regl.cli`: how the sandbox and child runs start the command."""

import sys

from regl.cli import main

sys.exit(main())
