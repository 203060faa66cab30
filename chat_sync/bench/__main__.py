"""``python -m chat_sync.bench SCENARIO``."""
import sys

from .command import main

sys.exit(main())
