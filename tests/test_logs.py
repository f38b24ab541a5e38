"""txraft.logs: JSON log lines for ``twistd --logger txraft.logs.json_observer``."""

import io
import json

from twisted.logger import Logger, eventsFromJSONLogFile, formatEvent

from txraft.logs import json_observer


def test_each_event_is_one_line_of_json_with_its_fields():
    out = io.StringIO()
    log = Logger(namespace="txraft.test", observer=json_observer(out))
    log.info("{member} follows {leader}, leader of term {term}", member="127.0.0.2:7001",
             leader="127.0.0.1:7001", term=3)
    log.warn("{member}: cannot reach {peer}", member="127.0.0.2:7001", peer="127.0.0.3:7001")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and not out.getvalue().startswith("\x1e")
    first = json.loads(lines[0])
    assert (first["member"], first["leader"], first["term"]) == ("127.0.0.2:7001", "127.0.0.1:7001", 3)
    assert first["log_namespace"] == "txraft.test" and first["log_level"]["name"] == "info"
    events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue())))
    assert [formatEvent(e) for e in events] == ["127.0.0.2:7001 follows 127.0.0.1:7001, leader of term 3",
                                               "127.0.0.2:7001: cannot reach 127.0.0.3:7001"]
