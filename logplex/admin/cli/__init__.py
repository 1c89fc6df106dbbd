"""``logplex``: manage channels, tokens, drains and credentials, and read logs, through a node's API.

Only the standard library: the client runs anywhere Python does, without Twisted.

Where it connects: ``--url``, else ``LOGPLEX_URL``, else http://localhost:8001.
The credential: ``--auth USER:PASSWORD``, else ``LOGPLEX_AUTH``, else the
``~/.netrc`` entry of the URL's host (login and password; the file must be
private to its owner).

Exit codes: 0 done; 1 the API refused (its answer was an error, authentication
included); 2 bad usage (arguments, ``--auth``, the URL, ``~/.netrc``); 3 the
node could not be reached, or the connection broke; 130 interrupted by Ctrl-C,
except ``logs -t``, which Ctrl-C ends normally (0). A closed standard output
(``| head``) ends a command quietly with 0.
"""

from logplex.admin.cli.program import main

__all__ = ["main"]
