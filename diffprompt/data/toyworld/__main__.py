"""``python -m diffprompt.data.toyworld [--root R] [--force] [--seed S] [--scale X]``."""

from diffprompt.data.toyworld.miniature import main

if __name__ == "__main__":
    raise SystemExit(main())
