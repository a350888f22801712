"""`python -m mlsys_bench ...`: the CLI where no console script is installed (the no-install path)."""

from mlsys_bench.cli import main

raise SystemExit(main())
