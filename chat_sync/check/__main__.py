"""``python -m chat_sync.check`` is ``chat-sync check``."""
import sys

from .runner import main

sys.exit(main())
