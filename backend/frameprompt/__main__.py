"""`python -m frameprompt ...` is the `frameprompt` command (what `torchrun -m frameprompt` needs)."""

from frameprompt.cli import main

raise SystemExit(main())
