"""``python -m fw.cli``: the fw command line."""
import sys

from fw.cli.main import main

sys.exit(main())
