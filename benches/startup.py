#!/usr/bin/env python3
"""Start-up with N tasks: import N tasks in chunks, stop cleanly, time /readyz from a snapshot
(3 starts), then after SIGKILL (scan, 2 starts); and idle RSS 5 s after ready.
Usage: benches/startup.py EXE PROJECT_DIR DATA_DIR PORT N CHUNK
(e.g. `python3 benches/startup.py $PWD/target/release/assay $PWD /tmp/s1m 47312 1000000 100000`;
DATA_DIR must not exist yet). Python standard library only."""
import json, os, random, signal, subprocess, sys, time, urllib.request, urllib.error
exe, proj, data, port, n, chunk = sys.argv[1:7]
port, n, chunk = int(port), int(n), int(chunk)
if os.path.exists(data):
    sys.exit(f"{data} exists: its tasks would be counted with the N imported here; give a new folder")
base = f"http://127.0.0.1:{port}"
PW = "startup-admin-Pw-4411"
def call(method, path, body=None, token=None, raw=False):
    hdr = {}
    b = None
    if body is not None:
        b = body.encode() if raw else json.dumps(body).encode()
        hdr["content-type"] = "application/x-ndjson" if raw else "application/json"
    if token: hdr["authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=b, method=method, headers=hdr)
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            x = r.read(); return r.status, (json.loads(x) if x else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:300]
    except Exception:
        return 0, None
env = dict(os.environ, ASSAY_ADMIN_PASSWORD=PW, RUST_LOG="warn", ASSAY_SERVER__MAX_IMPORT_MB="1024")
def start():
    t0 = time.time()
    p = subprocess.Popen([exe, "serve", "--bind", f"127.0.0.1:{port}", "--data", data], cwd=proj, env=env,
                         stdout=open(data + ".log", "ab"), stderr=subprocess.STDOUT)
    health = None
    while True:
        s, _ = call("GET", "/healthz")
        if s == 200 and health is None: health = time.time() - t0
        if call("GET", "/readyz")[0] == 200: return p, health, time.time() - t0
        time.sleep(0.005)
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
p, _, _ = start()
st, b = call("POST", "/api/v1/auth/login", {"username": "admin", "password": PW}); admin = b["token"]
st, b = call("POST", "/api/v1/projects", {"name": "s", "rubric": "pairwise_preference", "router": "fixed_overlap", "reviews_per_task": 1}, admin)
pid = b["id"]
rng = random.Random(7)
words = "the of model answer patient dose liver risk contract clause court tax revenue proof lemma function returns error index value because however therefore which should".split()
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(70, 250))) for _ in range(200)]
t_imp = 0
for c in range(0, n, chunk):
    lines = "\n".join(json.dumps({"external_id": f"t{i}", "data": {"prompt": texts[i % 200][:300], "responses": [texts[(i*7) % 200], texts[(i*13) % 200]]}}) for i in range(c, min(n, c + chunk)))
    t0 = time.time(); st, b = call("POST", f"/api/v1/projects/{pid}/tasks", lines, admin, raw=True); t_imp += time.time() - t0
    assert st == 201, (st, b)
print(f"imported {n} in {t_imp:.1f} s ({n/t_imp:.0f}/s)", flush=True)
du = subprocess.run(["du", "-sh", data], capture_output=True, text=True).stdout.split()[0]
print("data folder", du, flush=True)
for mode in ["snapshot", "snapshot", "snapshot", "kill", "kill"]:
    if mode == "snapshot":
        p.send_signal(signal.SIGTERM); p.wait()
    else:
        p.send_signal(signal.SIGKILL); p.wait()
    p, h, r = start()
    time.sleep(5)
    print(f"after {'clean stop' if mode=='snapshot' else 'SIGKILL'}: healthz {h:.2f} s, readyz {r:.2f} s, RSS 5 s later {rss(p.pid)} MB", flush=True)
p.send_signal(signal.SIGTERM); p.wait()
