"""``python -m runner``."""

from .cli import main

raise SystemExit(main())
