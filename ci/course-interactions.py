#!/usr/bin/env python3
"""Writes the course interaction captures in ../shared/data/course/events as one
`user<TAB>item<TAB>rating<TAB>unix-time` file (the evaluator's interactions layout): CMU F24
ratings (1-5; out-of-range values, which the course injects on purpose, are dropped and counted),
CMU F24 watches and McGill F22 interactions (no rating)."""
import csv, datetime, sys

src, out_path = sys.argv[1], sys.argv[2]


def unix(s):
    return int(datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.timezone.utc).timestamp())


written = dropped = 0
with open(out_path, "w") as out:
    for r in csv.DictReader(open(f"{src}/cmu-f24-ratings.csv")):
        if r["rating"] not in {"1", "2", "3", "4", "5"}:
            dropped += 1
            continue
        out.write(f"{r['user_id']}\t{r['movie_id']}\t{r['rating']}\t{unix(r['user_time'])}\n")
        written += 1
    for r in csv.DictReader(open(f"{src}/cmu-f24-watches.csv")):
        out.write(f"{r['user_id']}\t{r['movie_id']}\t\t{unix(r['user_time'])}\n")
        written += 1
    for r in csv.DictReader(open(f"{src}/mcgill-f22-interactions.csv")):
        out.write(f"{r['user_id']}\t{r['movie_id']}\t\t{int(float(r['timestamp']))}\n")
        written += 1
print(f"{written} interactions written to {out_path} ({dropped} ratings outside 1-5 dropped)", file=sys.stderr)
