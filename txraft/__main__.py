"""
``python -m txraft``: the ``txraft`` command, for when the console script is
not on ``PATH`` (a virtualenv not activated, a ``--user`` install).
"""

from txraft.cli import main

if __name__ == "__main__":
    main()
