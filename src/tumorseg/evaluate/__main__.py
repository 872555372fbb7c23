"""``python -m tumorseg.evaluate``: see ``tumorseg.evaluate.cli``."""

from tumorseg.evaluate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
