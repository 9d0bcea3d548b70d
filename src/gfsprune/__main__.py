"""``python -m gfsprune`` (also what ``torchrun -m gfsprune`` runs)."""

from gfsprune.cli import main

raise SystemExit(main())
