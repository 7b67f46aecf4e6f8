"""``python -m jobs.worker`` (the Procfile's ``worker``): the worker supervisor."""

import sys

from jobs.worker.supervisor import main

sys.exit(main())
