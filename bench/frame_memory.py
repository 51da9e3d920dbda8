# Measures the consumer's RSS while it holds a full prefetch of worst-case frames
# (docs/operations.md, "Limits of what the consumer reads"). Start a broker with
# scripts/activemq.sh start DIR 0, then:
#   python3 bench/frame_memory.py target/debug/consumer PORT "$(mktemp -d)" 500 new
# MODE new: protocol-named headers at 1 KiB; old: at 10 KB (kept outside the budget before).
import os, socket, sqlite3, subprocess, sys, time
binary, port, work, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
queue = "/queue/memprobe.%d" % os.getpid()
db = os.path.join(work, "probe.db")
def rss(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"): return int(line.split()[1])
env = dict(os.environ, DATABASE_URL="sqlite://" + db, BROKER_URL="tcp://127.0.0.1:%d" % port,
           ORDER_QUEUE=queue, ADMIN_ADDR="127.0.0.1:0", CONSUMER_PREFETCH=str(n), RUST_LOG="error")
p = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
p.stdout.readline()
time.sleep(3)
base = rss(p.pid)
lock = sqlite3.connect(db, timeout=30, isolation_level=None)
lock.execute("BEGIN EXCLUSIVE")
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0")
s.recv(4096)
body = b'{"order_id": 1, "pad": "' + b"x" * (65536 - 40) + b'"}'
body = body[:65536]
head = b""
if mode == "new":
    # every protocol-named header a producer can set, at 1 KiB, then tiny headers to the budget
    for name in [b"outbox-id", b"order-id", b"traceparent", b"tracestate", b"content-type"]:
        head += name + b":" + b"p" * (1020 - len(name)) + b"\n"
    for i in range(240):
        head += b"h%d:\n" % i
else:
    # the old codec's worst case: protocol-named headers kept outside the budget at up to 10 KiB each
    for name in [b"outbox-id", b"order-id", b"traceparent", b"tracestate", b"content-type"]:
        head += name + b":" + b"p" * 10000 + b"\n"
    for i in range(240):
        head += b"h%d:\n" % i
for i in range(n):
    s.sendall(b"SEND\ndestination:" + queue.encode() + b"\npersistent:true\nreceipt:r%d\n" % i + head +
              b"content-length:%d\n\n" % len(body) + body + b"\0")
got = b""
while got.count(b"RECEIPT") < n:
    got += s.recv(65536)
peak = base
deadline = time.time() + 20
while time.time() < deadline:
    peak = max(peak, rss(p.pid)); time.sleep(0.2)
held = rss(p.pid)
print("mode=%s prefetch=%d rss_before_kib=%d rss_holding_kib=%d peak_kib=%d delta_mib=%.1f" % (mode, n, base, held, peak, (held - base) / 1024))
lock.rollback(); p.terminate(); p.wait()
