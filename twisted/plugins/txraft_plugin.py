"""
The ``twistd raft`` plugin.

This directory has no ``__init__.py`` on purpose: twistd finds plugins by
scanning every ``twisted/plugins/`` directory on ``sys.path``.  The
:class:`~twisted.application.service.ServiceMaker` is lazy, so ``twistd
--help`` does not import txraft; :mod:`txraft.tap` holds the options.
"""

from twisted.application.service import ServiceMaker

txraft_member = ServiceMaker(
    "txraft",
    "txraft.tap",
    "A txraft member: Raft replicated log, mutual-TLS peers, key-value store and HTTP(S) API",
    "raft",
)
