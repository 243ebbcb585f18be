"""`python -m ganexp.compare SWEEP_DIR`: the entry point of ganexp/sweeps/compare.py, which says what it does."""
from ganexp.sweeps.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
