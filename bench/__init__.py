"""wr's benchmark: the load generator, the baselines and ``make bench``."""

from typing import Any, TypeAlias

# Results are JSON-shaped dicts, written to bench/results/ as they are.
Json: TypeAlias = dict[str, Any]
