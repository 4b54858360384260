#!/usr/bin/env python3
"""The incremental benchmark's inputs: 30 days of history, then the next day.

    gen_next_day.py EV2M.ndjson HISTORY.ndjson DAY.ndjson

EV2M is `gen_events.py 1000000`'s file (2M shuffled events, trips starting 2024-01-01 ..
2024-01-31 00:00 UTC). It is cut at 2024-01-31T00:00:00Z, as a day's delivery would cut it:

* HISTORY gets every event dated before the cut (30 days, ~1,999,000 events);
* DAY gets the events dated on the 31st from EV2M (ends of trips that started on the 30th),
  33,333 new trips starting on the 31st (both halves when the end falls on the 31st too, the
  start alone when it falls on 1 February), 0.2% of the day's events sent twice, and 100
  events from HISTORY redelivered. Shuffled, ~67,000 events.

Deterministic (seeded); written for tripflow's issue 22, not copied from the shared peer set.
"""

import datetime
import json
import random
import sys

CUT = "2024-01-31T00:00:00Z"
LATE = "2024-01-30T20:00:00Z"
DAY = datetime.datetime(2024, 1, 31, tzinfo=datetime.timezone.utc)
NEXT = DAY + datetime.timedelta(days=1)
NEW_TRIPS = 33_333


def stamp(t: datetime.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def main(src: str, history_out: str, day_out: str) -> None:
    rng = random.Random(31)
    history: list[str] = []
    day: list[str] = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            # gen_events.py writes fixed-width UTC stamps, so the text orders as the time does.
            (day if json.loads(line)["timestamp"] >= CUT else history).append(line)
    for i in range(NEW_TRIPS):
        start = DAY + datetime.timedelta(seconds=rng.randrange(86_400))
        end = start + datetime.timedelta(seconds=rng.randint(60, 3600))
        day.append(
            json.dumps(
                {"trip_id": f"d31-{i}", "event_type": "trip_start", "timestamp": stamp(start)}
            )
        )
        if end < NEXT:
            fare = round(rng.uniform(3, 80), 2)
            day.append(
                json.dumps(
                    {
                        "trip_id": f"d31-{i}",
                        "event_type": "trip_end",
                        "timestamp": stamp(end),
                        "fare": fare,
                    }
                )
            )
    day += rng.sample(day, len(day) // 500)
    # A producer's retries around the cut: redelivered events of the last hours.
    day += rng.sample([e for e in history if json.loads(e)["timestamp"] >= LATE], 100)
    rng.shuffle(day)
    with open(history_out, "w", encoding="utf-8") as f:
        f.write("\n".join(history) + "\n")
    with open(day_out, "w", encoding="utf-8") as f:
        f.write("\n".join(day) + "\n")
    print(f"{len(history)} history events, {len(day)} events on 2024-01-31")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
