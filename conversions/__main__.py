"""`python -m conversions ...` from a checkout: the same command as `python -m jtlens.conversions`."""

from jtlens.io.conversions.__main__ import main

raise SystemExit(main())
