#!/usr/bin/env python3
"""A master key command for the tests (SECURITY.md 5.17 describes the protocol).

Holds an AES-256 key in a file and wraps with AES-256-GCM (nonce | ciphertext | tag).
  kek-helper.py --key PATH [--id NAME] [--mode MODE] [--log PATH]
MODE makes it misbehave on wrap/unwrap requests (the id request is always answered unless
MODE begins with "id-"): ok, exit1, garbage, huge, hang, hang-child, refuse, twolines,
id-exit, id-none.
--log appends each request's op to PATH (to count requests and processes).
"""
import base64, json, os, sys, time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.exceptions import InvalidTag

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
mode = args.get("--mode", "ok")
key = base64.b64decode(open(args["--key"], "rb").read().strip())
log = args.get("--log")
if log:
    with open(log, "a") as f:
        f.write("start %d\n" % os.getpid())

def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

if mode == "id-exit":
    sys.stderr.write("helper: cannot reach the vault (token s.SECRET)\n")
    sys.exit(3)

for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if log:
        with open(log, "a") as f:
            f.write(op + "\n")
    if op == "id":
        if mode == "id-none":
            answer({"name": "x"})
        else:
            answer({"id": args.get("--id", "test-helper-key")})
        continue
    if mode == "exit1":
        sys.stderr.write("helper: failed, secret token s.SECRET\n")
        sys.exit(1)
    if mode == "garbage":
        sys.stdout.write("this is not json\n"); sys.stdout.flush(); continue
    if mode == "twolines":
        sys.stdout.write('{"ciphertext":"AAAA"}\n{"x":"y"}\n'); sys.stdout.flush(); continue
    if mode == "huge":
        chunk = "A" * 65536
        try:
            while True:
                sys.stdout.write(chunk)
        except BrokenPipeError:
            sys.exit(0)
    if mode == "hang":
        time.sleep(3600)
    if mode == "hang-child":
        # A child of its own that hangs too: stopping the helper must stop it as well.
        import subprocess
        child = subprocess.Popen(["sleep", "3600"])
        if log:
            with open(log, "a") as f:
                f.write("child %d\n" % child.pid)
        time.sleep(3600)
    if mode == "refuse":
        answer({"error": "permission denied for s.SECRET"}); continue
    aad = base64.b64decode(req["aad"])
    if op == "wrap":
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, base64.b64decode(req["plaintext"]), aad)
        answer({"ciphertext": base64.b64encode(nonce + ct).decode()})
    elif op == "unwrap":
        blob = base64.b64decode(req["ciphertext"])
        try:
            pt = AESGCM(key).decrypt(blob[:12], blob[12:], aad)
            answer({"plaintext": base64.b64encode(pt).decode()})
        except (InvalidTag, ValueError):
            answer({"error": "authentication"})
    else:
        answer({"error": "unknown op"})
