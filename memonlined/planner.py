"""The planner: decide a batch of offline blocks in ascending order, updating
the model after each decision, as the kernel's state would change if each
block were onlined in turn. Dry-run and real runs share it: a real run
commits the zone the kernel really chose, a dry-run the zone it decided.
"""

from __future__ import annotations


from .model import Machine
from .policy import Decision, Settings, zone_for_block


class Planner:
    """Decides blocks of MACHINE in turn and accounts each outcome in it
    (commit), as the kernel's counters would change. It changes the model it
    is given: to plan without touching the caller's, give it a copy."""

    def __init__(self, machine: Machine, settings: Settings):
        self.machine = machine
        self.settings = settings

    def offline_blocks(self) -> list[int]:
        return sorted(i for i, b in self.machine.blocks.items() if not b.online)

    def decide(self, index: int) -> Decision:
        return zone_for_block(self.machine, self.machine.blocks[index], self.settings)

    def commit(self, index: int, zone: str | None) -> None:
        """Record the outcome for a block: the zone it is online in now, or None
        when it stayed offline."""
        if zone is not None:
            self.machine.add_online(self.machine.blocks[index], zone)

    def plan(self, indexes: list[int] | None = None) -> list[Decision]:
        """Decide every offline block (or INDEXES) as if each were onlined as decided."""
        decisions = []
        for index in self.offline_blocks() if indexes is None else indexes:
            decision = self.decide(index)
            self.commit(index, decision.zone)
            decisions.append(decision)
        return decisions
