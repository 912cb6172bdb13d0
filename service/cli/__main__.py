"""`python -m service.cli ...` is `lelastic ...`."""

import sys

from service.cli.main import main

sys.exit(main())
