"""
A headless Chromium driven over the DevTools protocol, for tests of the live
cluster page.  The protocol runs over a pipe (``--remote-debugging-pipe``:
commands go to the browser's file descriptor 3, answers and events come from
its descriptor 4, each message JSON ended by a NUL byte), from the reactor, so
the members under test keep serving while the browser loads from them.
"""

import base64
import json
import shutil

from twisted.internet import defer, protocol, task

#: Where Debian's ``chromium`` package puts the browser.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe(protocol.ProcessProtocol):
    def __init__(self):
        self.buffer = b""
        self.answers = {}
        self.ended = defer.Deferred()
        self.stderr = b""

    def childDataReceived(self, fd, data):
        if fd == 4:
            self.buffer += data
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                waiting = self.answers.pop(message.get("id"), None)
                if waiting is not None:
                    waiting.callback(message)
        elif fd == 2:
            self.stderr = (self.stderr + data)[-4000:]

    def processEnded(self, reason):
        for waiting in self.answers.values():
            waiting.errback(RuntimeError(f"chromium ended: {self.stderr.decode(errors='replace')}"))
        self.answers = {}
        self.ended.callback(None)


class Browser:
    """
    One headless browser with one page.

    ``await Browser.start(reactor, profile_dir)``, then :meth:`goto`,
    :meth:`evaluate`, :meth:`wait_for`, :meth:`screenshot`; always
    :meth:`close`.
    """

    def __init__(self, reactor, pipe, transport):
        self.reactor = reactor
        self._pipe = pipe
        self._transport = transport
        self._next_id = 0
        self._session = None

    @classmethod
    async def start(cls, reactor, profile_dir, width=1000, height=900):
        pipe = _Pipe()
        args = [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-dev-shm-usage",
                f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", "about:blank"]
        transport = reactor.spawnProcess(pipe, CHROMIUM, args, env=None,
                                         childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        browser = cls(reactor, pipe, transport)
        target = await browser.send("Target.createTarget", url="about:blank")
        attached = await browser.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        browser._session = attached["sessionId"]
        await browser.send("Page.enable")
        return browser

    async def send(self, method, **params):
        """Send one protocol command; :returns: its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        answer = self._pipe.answers[self._next_id] = defer.Deferred()
        self._transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        reply = await answer.addTimeout(30, self.reactor)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url):
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression):
        """:returns: the value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression, timeout=15.0, what=None):
        """Poll ``expression`` until it is truthy; :returns: its value."""
        deadline = self.reactor.seconds() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            await task.deferLater(self.reactor, 0.1, lambda: None)

    async def screenshot(self, path):
        """Save a PNG of the page at ``path``."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    async def close(self):
        """Close the browser and wait for its process to end."""
        if self._pipe.ended.called:
            return
        message = {"id": 0, "method": "Browser.close", "params": {}}
        self._transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        ended = self._pipe.ended
        timer = self.reactor.callLater(10, lambda: ended.called or self._transport.signalProcess("KILL"))
        await ended
        if timer.active():
            timer.cancel()
