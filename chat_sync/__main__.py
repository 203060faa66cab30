"""``python -m chat_sync`` is the ``chat-sync`` command."""
import sys

from .cli import main

sys.exit(main())
