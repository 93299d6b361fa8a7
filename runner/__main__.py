"""``python -m runner``."""

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command is still loading: quiet, like main()
    raise SystemExit(130) from None

raise SystemExit(main())
