"""The environment: one episode per dataset row, whose ``table`` column ("k=v;k=v") is the store."""

from rewardkit import Environment


class LookupEnvironment(Environment):
    """``lookup(key)`` reads the store; ``case_sensitive`` is the recipe's param."""

    def __init__(self, case_sensitive: bool = True):
        super().__init__()
        self.case_sensitive = case_sensitive
        self.table: dict[str, str] = {}

    def reset(self, **row) -> str | None:
        pairs = (item.split("=", 1) for item in str(row.get("table", "")).split(";") if "=" in item)
        self.table = {self._key(k): v for k, v in pairs}
        return None

    def _key(self, key: str) -> str:
        return key if self.case_sensitive else key.lower()

    def lookup(self, key: str) -> str:
        """Read one value from the store.

        Args:
            key: the name of the value
        """
        if self._key(key) not in self.table:
            raise KeyError(f"no key {key!r}")
        return self.table[self._key(key)]
