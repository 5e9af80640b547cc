"""The harness's own view of an event's seat map: what buyers believe is still free.

Real buyers load the seat map once (ListSeats) and then learn from their own answers: a
booked seat leaves their map, a refusal naming sold seats removes those too, a refund puts
seats back. The harness shares one such view between all of its simulated buyers, so they
keep fighting over the best seats that are *believed* free, as a crowd refreshing the same
map would, instead of hammering seats everyone already knows are gone.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ticketing.rush.choice import RankPool, RankSampler, Skew
from ticketing.v1 import event_pb2


@dataclass(frozen=True)
class SeatInfo:
    """One place of the event as the harness ranks it (rank 0 = most wanted)."""

    id: int
    section_id: str
    row: str
    number: int
    rank: int


class EventView:
    """Ranked places, the free ones among them, and free places per section."""

    def __init__(self, event: event_pb2.Event, seats: Sequence[event_pb2.Seat], skew: Skew) -> None:
        self.event_id = event.id
        self.capacity = len(seats)
        self.section_ids = [s.section_id for s in event.sections]
        position = {sid: i for i, sid in enumerate(self.section_ids)}
        row_index: dict[tuple[str, str], int] = {}
        row_length: dict[tuple[str, str], int] = {}
        for seat in seats:
            key = (seat.section_id, seat.row_label)
            row_index.setdefault(key, len(row_index))
            row_length[key] = row_length.get(key, 0) + 1

        def desirability(seat: event_pb2.Seat) -> tuple[int, int, float, int]:
            key = (seat.section_id, seat.row_label)
            if not seat.row_label:  # general admission: no better or worse place
                return (position.get(seat.section_id, len(position)), 0, 0.0, seat.id)
            centre = (row_length[key] + 1) / 2
            return (
                position.get(seat.section_id, len(position)),
                row_index[key],
                abs(seat.number - centre),
                seat.id,
            )

        ranked = sorted(seats, key=desirability)
        self.by_rank = [
            SeatInfo(s.id, s.section_id, s.row_label, s.number, rank)
            for rank, s in enumerate(ranked)
        ]
        self.by_id = {info.id: info for info in self.by_rank}
        self._rows: dict[tuple[str, str], dict[int, int]] = {}
        for info in self.by_rank:
            if info.row:
                self._rows.setdefault((info.section_id, info.row), {})[info.number] = info.rank
        self.pool = RankPool(len(self.by_rank))
        self.section_free = {sid: 0 for sid in self.section_ids}
        for seat, info in zip(ranked, self.by_rank, strict=True):
            if seat.status == event_pb2.SEAT_STATUS_AVAILABLE:
                self.section_free[info.section_id] = self.section_free.get(info.section_id, 0) + 1
            else:
                self.pool.remove(info.rank)
        self._seat_sampler = RankSampler(max(1, len(self.by_rank)), skew)
        self._section_sampler = RankSampler(max(1, len(self.section_ids)), skew)

    @property
    def believed_free(self) -> int:
        """Places the harness has not seen sold."""
        return len(self.pool)

    def pick_seats(self, rng: random.Random, quantity: int) -> list[int]:
        """Up to `quantity` believed-free seat ids: a skewed anchor plus its row neighbours
        (groups sit together); general admission takes the next free places by rank.
        Empty when nothing is believed free."""
        free = len(self.pool)
        if free == 0:
            return []
        k = self._seat_sampler.draw(rng, free)
        anchor = self.by_rank[self.pool.kth(k)]
        chosen = [anchor.rank]
        if anchor.row:
            row = self._rows[(anchor.section_id, anchor.row)]
            offset = 1
            while len(chosen) < quantity and offset <= len(row):
                for number in (anchor.number + offset, anchor.number - offset):
                    rank = row.get(number)
                    if rank is not None and rank in self.pool and len(chosen) < quantity:
                        chosen.append(rank)
                offset += 1
        else:
            nxt = k + 1
            while len(chosen) < quantity and nxt < free:
                chosen.append(self.pool.kth(nxt))
                nxt += 1
        return sorted(self.by_rank[r].id for r in chosen)

    def pick_section(self, rng: random.Random, quantity: int) -> tuple[str, int] | None:
        """A skewed section that still has free places, and a quantity it can serve."""
        open_sections = [sid for sid in self.section_ids if self.section_free.get(sid, 0) > 0]
        if not open_sections:
            return None
        section = open_sections[self._section_sampler.draw(rng, len(open_sections))]
        return section, min(quantity, self.section_free[section])

    def taken(self, seat_ids: Iterable[int]) -> None:
        """These seats are sold (by us or by anyone): drop them from the free view."""
        for sid in seat_ids:
            info = self.by_id.get(sid)
            if info is not None and self.pool.remove(info.rank):
                self.section_free[info.section_id] -= 1

    def released(self, seat_ids: Iterable[int]) -> None:
        """A refund freed these seats again."""
        for sid in seat_ids:
            info = self.by_id.get(sid)
            if info is not None and self.pool.add(info.rank):
                self.section_free[info.section_id] += 1

    def section_available(self, section_id: str, available: int) -> None:
        """The server said how many places a section has left (SOLD_OUT details)."""
        if section_id in self.section_free:
            self.section_free[section_id] = max(0, available)

    @property
    def sections_open(self) -> bool:
        """Whether best-available still has any section believed to have places."""
        return any(n > 0 for n in self.section_free.values())
