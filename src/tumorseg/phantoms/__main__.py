"""``python -m tumorseg.phantoms OUT --cases N``: see ``tumorseg.phantoms.dataset``."""

import sys

from tumorseg.phantoms.dataset import main

if __name__ == "__main__":
    sys.exit(main())
