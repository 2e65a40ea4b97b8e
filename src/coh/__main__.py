import sys

from coh.cli import main

sys.exit(main())
