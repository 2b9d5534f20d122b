"""``python -m fw`` (and ``torchrun -m fw``): the fw command line."""
import sys

from fw.cli.main import main

sys.exit(main())
