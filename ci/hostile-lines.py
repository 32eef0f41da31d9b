#!/usr/bin/env python3
"""Over-long log lines for ci/hostile.sh.

  hostile-lines.py file PATH USER appends 100 lines of 1 MB, a 2 GiB line, then a normal line
                                  (a rating by USER)
  hostile-lines.py kafka BROKERS TOPIC USER
                                  produces 100 messages of 1 MB, then a normal one (a rating by
                                  USER + 1) to TOPIC (confluent-kafka from PyPI)
"""
import sys

ONE_MB = b"2026-12-05T00:00:00,1,GET /data/m/" + b"a" * (1 << 20) + b"/0.mpg"

if sys.argv[1] == "file":
    with open(sys.argv[2], "ab") as f:
        for _ in range(100):
            f.write(ONE_MB + b"\n")
        f.flush()
        chunk = b"b" * (64 << 20)
        for _ in range(32):  # 2 GiB without a newline
            f.write(chunk)
        f.write(f"\n2026-12-05T00:00:01,{int(sys.argv[3])},GET /rate/the+matrix+1999=8\n".encode())
elif sys.argv[1] == "kafka":
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": sys.argv[2], "message.max.bytes": 2 << 20})
    for _ in range(100):
        p.produce(sys.argv[3], ONE_MB)
        p.poll(0)
    p.produce(sys.argv[3], f"2026-12-05T00:00:02,{int(sys.argv[4]) + 1},GET /rate/the+matrix+1999=9".encode())
    left = p.flush(30)
    print(f"kafka: produced 101 messages ({left} not delivered)")
else:
    sys.exit(__doc__)
