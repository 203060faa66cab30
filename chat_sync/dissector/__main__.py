"""``python -m chat_sync.dissector``: the same as ``chat-sync dissector``."""
import sys

from . import main

sys.exit(main())
