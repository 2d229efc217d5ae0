"""Feature computation, free of I/O: an entity's running state plus an event gives a vector.

>>> from driftloop.config import EntityAggregate, FeatureView
>>> view = FeatureView(name="v", passthrough=["x"], entity_aggregates=[EntityAggregate(agg="count"),
...                    EntityAggregate(feature="x", agg="mean")])
>>> state = EntityState()
>>> state.observe("e1", {"x": 2.0}), state.vector(view, ["x"], {"x": 2.0})
(True, {'x': 2.0, 'entity_count': 1.0, 'entity_mean_x': 2.0})
>>> state.observe("e2", {"x": 4.0}), state.vector(view, ["x"], {"x": 4.0})
(True, {'x': 4.0, 'entity_count': 2.0, 'entity_mean_x': 3.0})
>>> state.observe("e2", {"x": 4.0})  # a re-sent event is not counted twice
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftloop.config import FeatureView
from driftloop.contracts.events import Features

#: Event ids remembered per entity to skip redeliveries; a re-sent event is rarely older than this.
RECENT_IDS = 64
#: A tuple, not ``int | float``: the union would be built again for every value folded.
_NUMBERS = (int, float)


@dataclass
class EntityState:
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)

    def observe(self, event_id: str, features: Features) -> bool:
        """Fold one event into the running aggregates; False when it was already counted."""
        recent = self.recent
        if event_id in recent:
            return False
        self.recent = [*recent[-(RECENT_IDS - 1) :], event_id]
        self.count += 1
        sums, seen = self.sums, self.seen
        for name, value in features.items():
            if isinstance(value, _NUMBERS) and not isinstance(value, bool):
                sums[name] = sums.get(name, 0.0) + float(value)
                seen[name] = seen.get(name, 0) + 1
        return True

    def vector(self, view: FeatureView, passthrough: list[str], features: Features) -> Features:
        """The view's features for the event just observed."""
        vector: Features = {name: features.get(name) for name in passthrough}
        for aggregate in view.entity_aggregates:
            if aggregate.feature is None:
                vector[aggregate.output_name] = float(self.count)
            else:
                n = self.seen.get(aggregate.feature, 0)
                vector[aggregate.output_name] = self.sums[aggregate.feature] / n if n else None
        return vector

    def to_dict(self) -> dict[str, Any]:
        # Shallow copies: ``dataclasses.asdict`` deep-copies every value and was a fifth of a batch's time.
        return {"count": self.count, "sums": dict(self.sums), "seen": dict(self.seen), "recent": list(self.recent)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EntityState:
        """A state of its own: ``observe`` changes it in place, and the table's entry must stay as it was."""
        if not data:
            return cls()
        return cls(data["count"], dict(data["sums"]), dict(data["seen"]), list(data["recent"]))
