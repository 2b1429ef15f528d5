"""`python -m taskherd ...`, the same as the `taskherd` console script."""

import sys

from taskherd.cli import main

if __name__ == "__main__":
    sys.exit(main())
