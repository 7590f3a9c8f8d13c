import sys

from sluiceway_common.cli import main

sys.exit(main())
