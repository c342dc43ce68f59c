"""``python3 -m eqliscsi``: the admin tool (``eqliscsi.admin``)."""

import sys

from eqliscsi.admin import main

sys.exit(main())
