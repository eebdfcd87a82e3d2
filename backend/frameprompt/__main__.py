"""`python -m frameprompt ...` is the `frameprompt` command (what `torchrun -m frameprompt` needs)."""

from .cli import main

raise SystemExit(main())
