"""``python -m txdht.aio``: run an asyncio node (see ``txdht.aio.launcher``)."""

from txdht.aio.launcher import main

raise SystemExit(main())
