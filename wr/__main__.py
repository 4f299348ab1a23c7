import sys

from wr.cli import main

sys.exit(main())
