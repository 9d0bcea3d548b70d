"""``python -m gfsprune`` (also what ``torchrun -m gfsprune`` runs)."""

from gfsprune._entry import main

raise SystemExit(main())
