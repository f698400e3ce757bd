"""``python -m gateway.envoyguard [FILE…]``: the guard without the CLI around it."""

from gateway.envoyguard.command import main

raise SystemExit(main())
