"""``python -m tumorseg.evaluate``."""

from tumorseg.evaluate.folder import main

if __name__ == "__main__":
    raise SystemExit(main())
