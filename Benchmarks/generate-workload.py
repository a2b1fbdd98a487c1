#!/usr/bin/env python3
"""Writes a deterministic workload shaped like the shared benchmark workload, for runs without
../shared: gzip'd JSON lines {"aggregate", "event", "name", "email", "address"}, ten events per
aggregate, names, e-mail addresses and long postal addresses (about 280 bytes a line).

    generate-workload.py OUT.jsonl.gz [AGGREGATES=10000] [SEED=20261129]

Another seed gives other events of the same shape: Benchmarks/dictionary-samples.jsonl.gz (seed 7,
5 aggregates) holds the synthetic sample events esbench --dictionary builds a preset compression
dictionary from.
"""
import gzip, json, random, sys

out = sys.argv[1]
aggregates = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 20261129)
first = ["Aoife", "Harper", "Noah", "Liam", "Mia", "Zoe", "Mateo", "Yusuf", "Ingrid", "Kenji", "Amara", "Lucas",
         "Sofia", "Oskar", "Priya", "Tomás", "Elif", "Chen", "Nadia", "Rafael", "Olivia", "Ethan", "Ava", "Leo"]
last = ["Brown", "Fitzgerald-Hughes", "Williams", "Okafor", "Nakamura", "García", "Novak", "Lindqvist", "Haddad",
        "O'Connor", "Kowalski", "Dubois", "Rossi", "Andersen", "Mensah", "Petrov", "Smith", "Johnson"]
domains = ["proton.me", "mail.university.edu", "example-corp.com", "post.example.org", "inbox.example.net"]
streets = ["Pine Place", "Sunset Street", "Highland Place", "Maple Avenue", "Harbour Road", "Elm Court", "Oak Lane"]
cities = ["Austin, TX", "San Francisco, CA", "Brooklyn, NY", "Portland, OR", "Denver, CO", "Madison, WI"]
companies = ["Acme Logistics Ltd", "Globex Corporation", "Initech Holdings", "Umbrella Freight", "Stark Supply"]
with gzip.open(out, "wt", encoding="utf-8") as f:
    for a in range(aggregates):
        for e in range(10):
            fn, ln = rng.choice(first), rng.choice(last)
            name = f"{fn} {rng.choice(first)} {chr(65 + rng.randrange(26))}. {ln}"
            email = f"{fn.lower()}.{ln.lower().replace(chr(39), '')}{rng.randrange(10000)}@{rng.choice(domains)}"
            address = (f"{rng.randrange(1, 99999)} {rng.choice(streets)}, Apt {rng.randrange(1, 999)}, "
                       f"Building G{rng.randrange(1, 60)}, Floor {rng.randrange(1, 40)}, c/o {rng.choice(companies)}, "
                       f"{rng.choice(cities)} {rng.randrange(10000, 99999)}-{rng.randrange(1000, 9999)}, "
                       "United States of America")
            f.write(json.dumps({"aggregate": a, "event": e, "name": name, "email": email, "address": address}) + "\n")
