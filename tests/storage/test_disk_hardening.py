"""
The log directory against a careless past and other local users (issue 9):
a stored term no member can use is refused at open with the file and the
repair; log directories and files are private to the member's user.
"""

import os

import pytest

from txraft.errors import CorruptLog
from txraft.messages import HardState
from tests.storage.helpers import deferred_test, entry

FIRST_LOG = "00000000000000000000.00000000000000000000.log"


@pytest.mark.parametrize("term", [2**62, 2**64 - 1])
@deferred_test
def test_a_stored_term_no_member_can_use_is_refused_with_the_file_and_the_repair(storages, log_dir, term):
    storage = yield storages(log_dir)
    # What txraft 0.1.0 stored when a peer sent such a term.
    yield storage.save_hard_state(HardState(term, "127.0.0.2:7000"))
    yield storage.close()
    with pytest.raises(CorruptLog) as error:
        yield storages(log_dir)
    message = str(error.value)
    assert os.path.join(log_dir, FIRST_LOG) in message
    assert "HardState.term" in message and str(term) in message
    assert "Repair" in message and "docs/operations.md" in message
