"""
The log directory against a careless past and other local users (issue 9):
a stored term no member can use is refused at open with the file and the
repair; log directories and files are private to the member's user.
"""

import os

import pytest

from txraft.errors import CorruptLog
from txraft.messages import HardState, SnapshotMeta
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


def modes(directory):
    return {name: os.stat(os.path.join(directory, name)).st_mode & 0o777 for name in os.listdir(directory)}


@deferred_test
def test_a_new_log_directory_and_its_files_are_private(storages, log_dir):
    """Finding 5: logs were created 0644 in a 0755 directory."""
    old = os.umask(0o022)
    try:
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 11)])
        writer = storage.snapshot_writer(SnapshotMeta(5, 1))
        writer.fileobj.write(b"state")
        yield writer.commit()
        yield storage.close()
    finally:
        os.umask(old)
    assert os.stat(log_dir).st_mode & 0o777 == 0o700
    found = modes(log_dir)
    assert any(name.endswith(".log") for name in found) and any(name.endswith(".snap") for name in found)
    assert set(found.values()) == {0o600}, found


@deferred_test
def test_an_existing_directory_or_file_others_may_read_is_warned_about(storages, log_dir):
    storage = yield storages(log_dir)
    yield storage.close()
    os.chmod(log_dir, 0o755)
    os.chmod(os.path.join(log_dir, FIRST_LOG), 0o644)
    events = []
    yield storages(log_dir, events=events.append)
    warned = {e["file"]: e["mode"] for e in events if e["log_level"].name == "warn" and "mode" in e}
    assert warned == {log_dir: "0755", os.path.join(log_dir, FIRST_LOG): "0644"}
