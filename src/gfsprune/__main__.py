"""``python -m gfsprune`` (also what ``torchrun -m gfsprune`` runs)."""

from gfsprune.workflow.cli import main

raise SystemExit(main())
