import sys

from harmony_core.cli import main

sys.exit(main())
