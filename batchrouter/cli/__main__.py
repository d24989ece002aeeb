import sys

from batchrouter.cli import main

sys.exit(main())
