"""``python -m tripflow_spark``: see :mod:`tripflow_spark.cli`."""

import sys

from tripflow_spark.cli import main

sys.exit(main())
