import sys

from warngate.cli import main

sys.exit(main())
