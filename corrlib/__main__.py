import sys

from corrlib.cli import main

sys.exit(main())
