"""A planted bug for the chaos runner to catch: reads served from any member's local state (?stale=true)."""

from txraft.testing.workload import KeyValueAdapter


class StaleReads(KeyValueAdapter):
    async def _invoke(self, member, kind, key, value):
        if kind != "read":
            return await super()._invoke(member, kind, key, value)
        found = await self._client(member).get(key, stale=True)
        return None if found is None else found.decode("utf-8")
