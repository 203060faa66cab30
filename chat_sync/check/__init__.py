"""``chat-sync check [--udp] HOST:PORT``: does a chat server keep the protocol's promises?

The README's protocol section is a promise to other people's code, and this
package checks it over the wire alone, so it works on any server: chat_sync's,
a student's lesson server, someone else's. It is course material too: each
rule is a short function a student can read to see what exactly is promised.

- ``rules``: the table of rules, each an id, a stage and a one-line statement.
- ``wire``: a connection whose every wait has a deadline, and a rule's session.
- ``tcp_rules``, ``tcp_error_rules``: the checks themselves, plain functions.
- ``udp_wire``, ``udp_rules``: the same for UDP (``--udp``): a datagram peer
  that acks and echoes the session id, and the rules of "Chat over UDP".
- ``runner``: running them, the report, and the command line.
"""
from .runner import main

__all__ = ["main"]
