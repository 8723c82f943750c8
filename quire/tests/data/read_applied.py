"""Reads a Quire deployment's applied topic with an independent Kafka client
(kafka-python, not librdkafka), as an analytics or audit job would, and
prints one JSON line per document: its ops in order, the text they build,
and how many records' hashes it verified (the chain of docs/records.md,
computed here independently of Quire's code).

usage: read_applied.py BROKER TOPIC
"""
import hashlib
import json
import sys

from kafka import KafkaConsumer, TopicPartition


def apply(text, op):
    # SPEC §3: positions in code points; int > 0 retains, str inserts,
    # int < 0 deletes.
    out, i = [], 0
    for c in op:
        if isinstance(c, str):
            out.append(c)
        elif c > 0:
            out.append(text[i:i + c])
            i += c
        else:
            i += -c
    out.append(text[i:])
    return "".join(out)


DOMAIN = b"quire-applied-chain-v1\n"


def chain_hash(prev, rec):
    # docs/records.md: SHA-256 over the domain tag, the previous record's
    # hash (32 zero bytes before the first) and the canonical content.
    fields = ["doc", "seq", "prev", "client", "cseq", "base", "user", "ts", "op", "del"]
    canonical = json.dumps([rec[f] for f in fields], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(DOMAIN + prev + canonical.encode("utf-8")).digest()


def main():
    broker, topic = sys.argv[1], sys.argv[2]
    consumer = KafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        consumer_timeout_ms=3000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    docs = {}
    for msg in consumer:
        rec = json.loads(msg.value)
        doc = msg.key.decode()
        if rec.get("kind") != "applied":
            continue
        assert rec["doc"] == doc, (rec["doc"], doc)
        d = docs.setdefault(doc, {"seq": 0, "text": "", "ops": 0, "chain": bytes(32), "verified": 0})
        if rec["seq"] <= d["seq"]:
            continue  # an answer written twice by overlapping transformers
        assert rec["prev"] == d["seq"], f"{doc}: gap before {rec['seq']}"
        if rec["v"] >= 2:
            d["chain"] = chain_hash(d["chain"], rec)
            assert rec["hash"] == d["chain"].hex(), f"{doc}: the chain breaks at {rec['seq']}"
            d["verified"] += 1
        else:
            d["chain"] = bytes(32)  # version 1: no hash, the chain restarts
        d["text"] = apply(d["text"], rec["op"])
        d["seq"] = rec["seq"]
        d["ops"] += 1
    for doc, d in sorted(docs.items()):
        print(json.dumps({"doc": doc, "seq": d["seq"], "ops": d["ops"], "text": d["text"],
                          "verified": d["verified"]}))


if __name__ == "__main__":
    main()
