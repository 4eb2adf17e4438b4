import sys

from dit_export.cli import main

sys.exit(main())
