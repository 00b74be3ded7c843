"""``python -m edge_agent`` = ``qcloop-edge``."""

from edge_agent.cli import main

raise SystemExit(main())
