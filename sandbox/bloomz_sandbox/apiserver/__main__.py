"""``python -m bloomz_sandbox.apiserver``: serve the API emulator alone until Ctrl-C."""

from .server import main

raise SystemExit(main())
