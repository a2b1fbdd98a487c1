#!/usr/bin/env python3
"""A master key command for the tests (SECURITY.md 5.17 describes the protocol).

Holds an AES-256 key in a file and wraps with AES-256-GCM (nonce | ciphertext | tag).
  kek-helper.py --key PATH [--id NAME] [--mode MODE] [--log PATH]
MODE makes it misbehave on wrap/unwrap requests (the id request is always answered unless
MODE begins with "id-"): ok, exit1, garbage, huge, hang, hang-child, exit-child, refuse,
twolines, stderr-flood, id-exit, id-none; or behave but: report (logs its blocked and ignored
signals and which ESCTL_*, PGPASSWORD and TEST_SECRET* variables it sees), close-stderr (points
its stderr elsewhere at start, answers each request after a second).
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

if mode == "report" and log:
    with open(log, "a") as f:
        for line in open("/proc/self/status"):
            if line.startswith("SigBlk:") or line.startswith("SigIgn:"):
                f.write(line.split(":")[0].lower() + " " + line.split(":")[1].strip() + "\n")
        for name in sorted(os.environ):
            if name.startswith("ESCTL_") or name == "PGPASSWORD" or name.startswith("TEST_SECRET"):
                f.write("env " + name + "\n")

if mode == "close-stderr":
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)

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
    if mode == "exit-child":
        # Exits, leaving a child that hangs (holding none of its pipes): stopping the helper
        # must stop the child too.
        import subprocess
        child = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if log:
            with open(log, "a") as f:
                f.write("child %d\n" % child.pid)
        sys.exit(1)
    if mode == "stderr-flood":
        # Writes its stderr without end (for 20 s at most), from three processes, and never answers.
        end = time.time() + 20
        for _ in range(2):
            if os.fork() == 0:
                break
        block = b"x" * 65536
        while time.time() < end:
            try:
                os.write(2, block)
            except BlockingIOError:
                pass
        os._exit(0)
    if mode == "close-stderr":
        time.sleep(1)
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
