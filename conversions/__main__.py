"""`python -m conversions ...` from a checkout: the same command as `python -m jtlens.conversions`."""

from jtlens.report.convert_command import main

raise SystemExit(main())
