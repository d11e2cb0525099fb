"""The API-heavy half of `make bench-ledger` (e2e/bench/ledger.sh runs the processes): objects to
create, waits, and the measurement itself, over raw HTTPS with the kubeconfig's credentials (no
Kubernetes client library: PyYAML and the standard library only).

  ledger.py manifests DIR NS ENDPOINTS PER_ENDPOINT BATCH   endpoints.yaml and pods-NNN.yaml
  ledger.py wait KUBECONFIG NS WHAT N TIMEOUT               ready | ledgers | allocated: until N
  ledger.py bench KUBECONFIG NS ... --out FILE              the measured phases, figures as JSON
  ledger.py cleanup KUBECONFIG NS                           delete what the benchmark created
  ledger.py report RESULTS SETUP [--markdown] [--page PAGE] the summary (and the page's section)

The simulated sidecars: every ledger gets a server-side-apply of its status (field manager
`ai-sidecar`, as sidecar/src/report.rs writes it) every `--interval` seconds, phases spread evenly,
counters only growing (each report: one more call, 10 input and 2 output tokens, $0.000020).
A write that comes due while the writer is busy is sent late, never skipped (the sidecar's
`MissedTickBehavior::Delay`), so a writer that cannot keep up shows as a lower achieved rate and
growing lateness, not as lost reports.
"""

import argparse
import base64
import datetime
import heapq
import http.client
import json
import multiprocessing
import os
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from decimal import Decimal

import yaml

GROUP = "/apis/ai.kernelpanic09.io/v1alpha1"
MANAGER = "ai-sidecar"
PROBE_DOLLARS = Decimal(1)
# Per report: one call of 10 input and 2 output tokens at Claude Haiku 4.5's $1 / $5 per million.
MICRO_PER_REPORT = 20


# --- The API server -------------------------------------------------------------------------------

class Kube:
    """The kubeconfig's current context: server, CA, and a token or client certificate."""

    def __init__(self, kubeconfig):
        with open(kubeconfig) as f:
            cfg = yaml.safe_load(f)
        current = cfg.get("current-context")
        context = next(c["context"] for c in cfg["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
        url = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        if "certificate-authority-data" in cluster:
            self.tls = ssl.create_default_context(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        else:
            self.tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.headers = {}
        if "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"
        else:
            cert, key = user.get("client-certificate"), user.get("client-key")
            if "client-certificate-data" in user:
                tmp = tempfile.mkdtemp()
                cert, key = os.path.join(tmp, "crt"), os.path.join(tmp, "key")
                for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                    with open(path, "wb") as f:
                        f.write(base64.b64decode(user[field]))
            self.tls.load_cert_chain(cert, key)

    def connection(self):
        return Connection(self)


class Connection:
    """One keep-alive HTTPS connection; reconnects once after a broken one."""

    def __init__(self, kube):
        self.kube = kube
        self.conn = None

    def request(self, method, path, body=None, content_type=None):
        headers = dict(self.kube.headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.kube.host, self.kube.port,
                                                        context=self.kube.tls, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, path):
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def list_all(self, path, limit=500):
        """Every item of a list, in pages."""
        items, token = [], ""
        while True:
            sep = "&" if "?" in path else "?"
            page = self.json(f"{path}{sep}limit={limit}" + (f"&continue={urllib.parse.quote(token)}" if token else ""))
            items += page["items"]
            token = page["metadata"].get("continue")
            if not token:
                return items


def usages_path(ns):
    return f"{GROUP}/namespaces/{ns}/modelusages"


def endpoints_path(ns):
    return f"{GROUP}/namespaces/{ns}/modelendpoints"


def pod_name(i):
    return f"app-{i:05d}"


def endpoint_name(e):
    return f"ep-{e:03d}"


def ledger_of(i, per_endpoint):
    """Pod i's ledger: `<pod>.<endpoint>`, pods 0..per_endpoint-1 on ep-000 and so on."""
    return f"{pod_name(i)}.{endpoint_name(i // per_endpoint)}"


# --- Objects --------------------------------------------------------------------------------------

def cmd_manifests(args):
    """The seed's ModelEndpoint without role and guardrail, ENDPOINTS times; PER_ENDPOINT pods each,
    as the webhook leaves them (label and annotations), in files of BATCH pods."""
    with open("manifests/samples/modelendpoint.yaml") as f:
        seed = yaml.safe_load(f)
    seed["spec"].pop("irsaRoleArn", None)
    seed["spec"].pop("guardrailPolicyRef", None)
    seed["metadata"]["namespace"] = args.ns
    docs = []
    for e in range(args.endpoints):
        seed["metadata"]["name"] = endpoint_name(e)
        docs.append(yaml.safe_dump(seed, sort_keys=False))
    with open(os.path.join(args.dir, "endpoints.yaml"), "w") as f:
        f.write("---\n".join(docs))
    pods = []
    for i in range(args.endpoints * args.per_endpoint):
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name(i), "namespace": args.ns,
                "labels": {"ai.kernelpanic09.io/sidecar": "injected"},
                "annotations": {"ai.kernelpanic09.io/inject": "true",
                                "ai.kernelpanic09.io/endpoints": endpoint_name(i // args.per_endpoint)},
            },
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        })
    for n, start in enumerate(range(0, len(pods), args.batch)):
        with open(os.path.join(args.dir, f"pods-{n:03d}.yaml"), "w") as f:
            f.write("---\n".join(json.dumps(p) + "\n" for p in pods[start:start + args.batch]))


def count_usages(conn, ns):
    page = conn.json(f"{usages_path(ns)}?limit=1")
    return len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)


def cmd_wait(args):
    conn = Kube(args.kubeconfig).connection()
    deadline = time.monotonic() + args.timeout
    have = 0
    while time.monotonic() < deadline:
        if args.what == "ledgers":
            have = count_usages(conn, args.ns)
        elif args.what == "allocated":
            have = sum(1 for u in conn.list_all(usages_path(args.ns)) if u["spec"].get("allocation"))
        else:  # ready
            have = sum(1 for e in conn.list_all(endpoints_path(args.ns)) if (e.get("status") or {}).get("available"))
        if have >= args.n:
            return
        time.sleep(0.25 if args.what == "ledgers" else 1)
    sys.exit(f"timed out after {args.timeout}s waiting for {args.n} {args.what}: {have}")


def cmd_cleanup(args):
    """Deletes the benchmark's objects (the operator stopped first): ledgers without their fold
    finalizer, Pods, endpoints; the test control plane has no namespace controller to do it."""
    kube = Kube(args.kubeconfig)
    names = [u["metadata"]["name"] for u in kube.connection().list_all(usages_path(args.ns))]

    def unfinalize(mine):
        conn = kube.connection()
        for name in mine:
            conn.request("PATCH", f"{usages_path(args.ns)}/{name}", '{"metadata":{"finalizers":null}}',
                         "application/merge-patch+json")
    threads = [threading.Thread(target=unfinalize, args=(names[t::8],)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = kube.connection()
    for path in (usages_path(args.ns), f"/api/v1/namespaces/{args.ns}/pods", endpoints_path(args.ns)):
        conn.request("DELETE", path)


# --- The simulated sidecars -----------------------------------------------------------------------

def periods():
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return today.isoformat(), f"{today.year:04d}-{today.month:02d}"


def money(micro):
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


def report_body(sequence, extra_micro=0):
    """A sidecar's report after `sequence` reports (each one call more), plus `extra_micro`."""
    day, month = periods()
    cost = money(sequence * MICRO_PER_REPORT + extra_micro)

    def period(name):
        return {"period": name, "invocations": sequence, "inputTokens": 10 * sequence,
                "outputTokens": 2 * sequence, "cost": cost}
    status = {"day": period(day), "month": period(month), "lifetime": period(""),
              "demand": {"requestsPerMinute": 1, "tokensPerMinute": 12}, "reserved": "0",
              "sequence": sequence,
              "reportedAt": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    return json.dumps({"apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage", "status": status})


def write_report(conn, ns, ledger, sequence, extra_micro=0):
    path = f"{usages_path(ns)}/{ledger}/status?fieldManager={MANAGER}&force=true"
    status, body = conn.request("PATCH", path, report_body(sequence, extra_micro),
                                "application/apply-patch+yaml")
    return status


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def writer_process(kubeconfig, ns, ledgers, threads, mode, start, interval, stop, sequence0, out):
    """One process of simulated sidecars. mode "once": every ledger written once, as fast as
    possible. mode "load": each ledger every `interval` s from `start` + its phase until `stop` is
    set; a report that comes due while its thread is busy goes out late and the next one is due an
    interval after it (the sidecar's `MissedTickBehavior::Delay`). Puts its counts on `out`: writes
    per second (by the second they were sent), and (sent, latency, lateness) of each write."""
    kube = Kube(kubeconfig)
    lock = threading.Lock()
    stats = {"per_second": {}, "errors": {}, "writes": [], "pid": os.getpid()}

    def run(mine):
        conn = kube.connection()
        # (due, name, sequence): the thread's ledgers, the next due first.
        queue = [(time.time() if mode == "once" else start + offset, name, sequence0) for name, offset in mine]
        heapq.heapify(queue)
        while queue and not stop.is_set():
            due, name, sequence = heapq.heappop(queue)
            delay = due - time.time()
            if delay > 0 and stop.wait(delay):
                return
            sent = time.time()
            try:
                code = write_report(conn, ns, name, sequence)
            except Exception as e:  # noqa: BLE001  (counted; the ledger is tried again next round)
                code = type(e).__name__
            done = time.time()
            with lock:
                if code == 200:
                    second = int(sent)
                    stats["per_second"][second] = stats["per_second"].get(second, 0) + 1
                    stats["writes"].append((sent, (done - sent) * 1000, max(0.0, sent - due) * 1000))
                    sequence += 1
                else:
                    stats["errors"][str(code)] = stats["errors"].get(str(code), 0) + 1
            if mode == "load":
                heapq.heappush(queue, (max(due, sent) + interval, name, sequence))

    workers = [threading.Thread(target=run, args=(ledgers[t::threads],)) for t in range(threads) if ledgers[t::threads]]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    stats["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    out.put(stats)


class Writers:
    """The simulated sidecars in --processes processes (Python threads share one core each)."""

    def __init__(self, args, ledgers, mode, start=0.0, sequence0=1):
        ctx = multiprocessing.get_context("fork")
        self.out, self.stop = ctx.Queue(), ctx.Event()
        # Each ledger's phase within the interval: spread evenly, as independent sidecars are.
        scheduled = [(name, i / len(ledgers) * args.interval) for i, name in enumerate(ledgers)]
        self.procs = [ctx.Process(target=writer_process, args=(
            args.kubeconfig, args.ns, scheduled[p::args.processes], args.threads, mode, start, args.interval,
            self.stop, sequence0, self.out)) for p in range(args.processes)]
        for p in self.procs:
            p.start()

    def finish(self, stop=True):
        """Stops them (or, `stop` false, waits for a "once" round to end); their merged counts."""
        if stop:
            self.stop.set()
        merged = {"per_second": {}, "errors": {}, "writes": [], "cpu_s": 0.0}
        for _ in self.procs:
            s = self.out.get()
            merged["writes"] += s["writes"]
            merged["cpu_s"] += s["cpu_s"]
            for key in ("per_second", "errors"):
                for k, v in s[key].items():
                    merged[key][k] = merged[key].get(k, 0) + v
        for p in self.procs:
            p.join()
        return merged


# --- Figures from processes and metrics -----------------------------------------------------------

def proc_cpu_s(pid):
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text, names):
    """{(name, frozenset(labels)): value} for the metrics whose name is in `names`."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = LINE.match(line)
        if not m or m.group(1) not in names:
            continue
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


APISERVER_METRICS = {"apiserver_request_total", "apiserver_response_sizes_sum", "apiserver_watch_events_total",
                     "apiserver_watch_events_sizes_sum"}
OPERATOR_METRICS = {"k8s_ai_operator_reconciliations_total", "k8s_ai_operator_reconcile_errors_total",
                    "k8s_ai_operator_allocation_writes_total", "k8s_ai_operator_reconcile_duration_seconds_sum",
                    "k8s_ai_operator_reconcile_duration_seconds_count"}


class Snapshots:
    def __init__(self, args, conn):
        self.args, self.conn = args, conn

    def take(self):
        status, body = self.conn.request("GET", "/metrics")
        api = parse_metrics(body.decode(), APISERVER_METRICS) if status == 200 else {}
        with urllib.request.urlopen(self.args.operator_metrics, timeout=30) as r:
            op = parse_metrics(r.read().decode(), OPERATOR_METRICS)
        return {"t": time.time(), "api": api, "op": op,
                "cpu": {"operator": proc_cpu_s(self.args.operator_pid),
                        "apiserver": proc_cpu_s(self.args.apiserver_pid)}}


def delta(a, b, section):
    return {k: b[section].get(k, 0) - a[section].get(k, 0) for k in set(b[section]) | set(a[section])}


def window_figures(a, b):
    """Per-second figures between two snapshots."""
    seconds = b["t"] - a["t"]
    api = delta(a, b, "api")
    op = delta(a, b, "op")
    requests = {}
    list_bytes = watch_events = watch_bytes = 0.0
    for (name, labels), v in api.items():
        lab = dict(labels)
        if name == "apiserver_request_total" and v:
            key = lab.get("resource", "") + ("/" + lab["subresource"] if lab.get("subresource") else "")
            requests[f"{lab.get('verb', '?')} {key}"] = requests.get(f"{lab.get('verb', '?')} {key}", 0) + v
        elif name == "apiserver_response_sizes_sum" and lab.get("resource") == "modelusages" and lab.get("verb") == "LIST":
            list_bytes += v
        elif name == "apiserver_watch_events_total" and "ModelUsage" in (lab.get("kind", "") + lab.get("resource", "")).replace("modelusages", "ModelUsage"):
            watch_events += v
        elif name == "apiserver_watch_events_sizes_sum" and "ModelUsage" in (lab.get("kind", "") + lab.get("resource", "")).replace("modelusages", "ModelUsage"):
            watch_bytes += v
    reconciles, errors, durations, counts = {}, {}, {}, {}
    allocation_writes = 0.0
    for (name, labels), v in op.items():
        lab = dict(labels)
        if name == "k8s_ai_operator_reconciliations_total":
            reconciles[lab["controller"]] = v
        elif name == "k8s_ai_operator_reconcile_errors_total" and v:
            errors[f"{lab['controller']} {lab['error']}"] = v
        elif name == "k8s_ai_operator_allocation_writes_total":
            allocation_writes = v
        elif name == "k8s_ai_operator_reconcile_duration_seconds_sum":
            durations[lab["controller"]] = v
        elif name == "k8s_ai_operator_reconcile_duration_seconds_count":
            counts[lab["controller"]] = v
    cpu = {k: (b["cpu"][k] - a["cpu"][k]) / seconds for k in a["cpu"]}
    # Reconciles started but not finished when the window ended (a long one spans windows).
    in_flight = {}
    for (name, labels), v in b["op"].items():
        if name == "k8s_ai_operator_reconciliations_total":
            done = b["op"].get(("k8s_ai_operator_reconcile_duration_seconds_count", labels), 0)
            if v - done:
                in_flight[dict(labels)["controller"]] = v - done
    return {
        "seconds": seconds,
        "requests_per_s": {k: v / seconds for k, v in sorted(requests.items()) if v},
        "modelusage_list_mib_per_s": list_bytes / seconds / 2**20,
        "modelusage_watch_events_per_s": watch_events / seconds,
        "modelusage_watch_mib_per_s": watch_bytes / seconds / 2**20,
        "reconciles_per_s": {k: v / seconds for k, v in sorted(reconciles.items()) if v},
        "reconcile_errors": errors,
        "reconcile_mean_ms": {k: 1000 * durations[k] / counts[k] for k in counts if counts[k]},
        "allocation_writes_per_s": allocation_writes / seconds,
        "in_flight_at_end": in_flight,
        "cpu_cores": cpu,
    }


WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION", "CREATE", "UPDATE"}


# --- The measurement ------------------------------------------------------------------------------

class ProbeLedgers:
    """The one ledger per probed endpoint that the main process reports itself (on the same
    schedule as the others), so that a probe's extra dollar and the regular reports never race:
    one lock per ledger, writes in order, counters only growing."""

    def __init__(self, args, names):
        self.args = args
        self.state = {n: {"sequence": 1, "extra": 0, "lock": threading.Lock()} for n in names}
        self.kube = Kube(args.kubeconfig)
        self.writes = 0

    def write(self, conn, name, bump=0):
        s = self.state[name]
        with s["lock"]:
            s["extra"] += bump
            code = write_report(conn, self.args.ns, name, s["sequence"], s["extra"])
            if code == 200:
                s["sequence"] += 1
                self.writes += 1
            elif bump:
                raise RuntimeError(f"probe write of {name} failed: {code}")
            return code

    def report_loop(self, start, stop):
        """Reports each probe ledger every interval, as the background writers do."""
        conn = self.kube.connection()
        names = sorted(self.state)
        queue = [(start + (i + 0.5) / len(names) * self.args.interval, name) for i, name in enumerate(names)]
        heapq.heapify(queue)
        while not stop.is_set():
            due, name = heapq.heappop(queue)
            if due > time.time() and stop.wait(due - time.time()):
                return
            sent = time.time()
            self.write(conn, name)
            heapq.heappush(queue, (max(due, sent) + self.args.interval, name))


def cost_this_month(conn, ns, endpoint):
    e = conn.json(f"{endpoints_path(ns)}/{endpoint}")
    return Decimal((e.get("status") or {}).get("costThisMonth") or "0")


def probe(conn, args, probes, name, endpoint):
    """Adds $1 to one ledger; the time until its endpoint's costThisMonth shows it."""
    before = cost_this_month(conn, args.ns, endpoint)
    t0 = time.time()
    probes.write(conn, name, bump=int(PROBE_DOLLARS * 1_000_000))
    written = time.time()
    deadline = t0 + args.probe_timeout
    while time.time() < deadline:
        if cost_this_month(conn, args.ns, endpoint) >= before + PROBE_DOLLARS:
            return {"endpoint": endpoint, "seconds": time.time() - t0, "write_ms": (written - t0) * 1000}
        time.sleep(args.poll)
    return {"endpoint": endpoint, "seconds": None, "write_ms": (written - t0) * 1000}


def run_probes(conn, args, probes, targets, start, spacing, deadline=float("inf")):
    """Probes one after the other, the i-th no earlier than start + i * spacing; none started after
    `deadline` (an operator far behind would otherwise stretch the run by a timeout per probe)."""
    results = []
    for i, (name, endpoint) in enumerate(targets):
        at = start + i * spacing
        if at > time.time():
            time.sleep(at - time.time())
        if time.time() > deadline:
            print(f"[ledger.py]   {len(targets) - i} probes not started: past the phase's end", file=sys.stderr)
            break
        results.append(probe(conn, args, probes, name, endpoint))
        print(f"[ledger.py]   probe {i + 1}/{len(targets)} {endpoint}: "
              + (f"{results[-1]['seconds']:.2f} s" if results[-1]["seconds"] is not None else "timed out"),
              file=sys.stderr)
    return results


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append(proc_mib(self.pid, "VmRSS"))
            self.stop.wait(1)

    def finish(self):
        self.stop.set()
        self.join()
        return {"max": max(self.samples, default=0.0), "last": self.samples[-1] if self.samples else 0.0}


def wait_quiet(snap, timeout, controllers=("ModelEndpoint", "Allocation"), quiet_for=3.0):
    """Waits until the operator has had no reconcile of `controllers` running or starting for
    `quiet_for` s; the seconds that took, or None after `timeout`."""
    start = time.time()
    last, since = None, time.time()
    while time.time() - start < timeout:
        with urllib.request.urlopen(snap.args.operator_metrics, timeout=30) as r:
            m = parse_metrics(r.read().decode(), OPERATOR_METRICS)
        state = []
        for c in controllers:
            labels = frozenset({("controller", c)})
            started = m.get(("k8s_ai_operator_reconciliations_total", labels), 0)
            state.append((started, started - m.get(("k8s_ai_operator_reconcile_duration_seconds_count", labels), 0)))
        if state != last or any(running for _, running in state):
            last, since = state, time.time()
        elif time.time() - since >= quiet_for:
            return since - start
        time.sleep(0.5)
    return None


def consistent(conn, ns, per_endpoint_ledgers):
    """Whether every endpoint's costThisMonth and invocationsThisMonth equal its ledgers' sums."""
    _, month = periods()
    sums = {}
    for u in conn.list_all(usages_path(ns)):
        m = ((u.get("status") or {}).get("month") or {})
        if m.get("period") == month:
            s = sums.setdefault(u["spec"]["endpoint"], [Decimal(0), 0])
            s[0] += Decimal(m.get("cost", "0"))
            s[1] += int(m.get("invocations", 0))
    wrong = 0
    for e in conn.list_all(endpoints_path(ns)):
        st = e.get("status") or {}
        want = sums.get(e["metadata"]["name"], [Decimal(0), 0])
        if Decimal(st.get("costThisMonth") or "0") != want[0] or int(st.get("invocationsThisMonth") or 0) != want[1]:
            wrong += 1
    return wrong


def cmd_bench(args):
    kube = Kube(args.kubeconfig)
    conn = kube.connection()
    snap = Snapshots(args, conn)
    n = args.endpoints * args.per_endpoint
    all_ledgers = [ledger_of(i, args.per_endpoint) for i in range(n)]
    # One probe ledger (its pod 0) per probed endpoint, spread over the endpoints.
    probed = sorted({(p * args.endpoints) // max(args.probes, 1) for p in range(args.probes)})
    probe_names = {endpoint_name(e): ledger_of(e * args.per_endpoint, args.per_endpoint) for e in probed}
    background = [l for l in all_ledgers if l not in set(probe_names.values())]
    probes = ProbeLedgers(args, probe_names.values())
    targets = [(probe_names[endpoint_name((p * args.endpoints) // max(args.probes, 1))],
                endpoint_name((p * args.endpoints) // max(args.probes, 1))) for p in range(args.probes)]
    idle_targets = targets[:args.idle_probes]
    results = {"ledgers": n, "endpoints": args.endpoints, "interval_s": args.interval,
               "probe_timeout_s": args.probe_timeout,
               "processes": args.processes, "threads": args.threads,
               "operator_rss_after_creation_mib": proc_mib(args.operator_pid, "VmRSS"),
               "operator_hwm_after_creation_mib": proc_mib(args.operator_pid, "VmHWM")}
    log = lambda msg: print(f"[ledger.py] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr)  # noqa: E731

    # 1. The first report of every sidecar, as fast as the writer goes.
    log(f"first report of all {n} ledgers, as fast as possible")
    a = snap.take()
    t0 = time.time()
    writers = Writers(args, background, "once")
    for name in probe_names.values():
        probes.write(conn, name)
    first = writers.finish(stop=False)
    t1 = time.time()
    ok = sum(first["per_second"].values()) + len(probe_names)
    results["first_round"] = {"seconds": t1 - t0, "ok": ok, "errors": first["errors"],
                              "writes_per_s": ok / (t1 - t0), "writer_cpu_s": first["cpu_s"]}
    settle = wait_quiet(snap, args.settle_timeout)
    results["first_round"]["settle"] = {"seconds": settle,
                                        "timeout": args.settle_timeout}
    b = snap.take()
    results["first_round"]["window"] = window_figures(a, b)
    log(f"  {ok} writes in {t1 - t0:.1f} s; the operator "
        + (f"settled {settle:.1f} s later" if settle is not None else f"still busy after {args.settle_timeout:g} s"))

    # 2. Idle: every ledger with status, nobody reporting; a few probes.
    log(f"idle for {args.idle_seconds:g} s, {len(idle_targets)} probes")
    rss = RssSampler(args.operator_pid)
    rss.start()
    a = snap.take()
    idle_probe_results = run_probes(conn, args, probes, idle_targets, time.time(), 0,
                                    a["t"] + args.idle_seconds + args.probe_timeout)
    time.sleep(max(0.0, a["t"] + args.idle_seconds - time.time()))
    b = snap.take()
    results["idle"] = {"window": window_figures(a, b), "probes": idle_probe_results, "rss_mib": rss.finish()}

    # 3. Load: every ledger every interval; probes spread over the measured window, which lasts
    # at least --seconds and until the last probe is answered.
    start = time.time() + 1
    w0 = start + args.warmup
    log(f"load: {n} ledgers every {args.interval:g} s (offered {n / args.interval:,.0f} writes/s), "
        f"{args.warmup:g} s warm-up, {args.seconds:g} s measured, {len(targets)} probes")
    writers = Writers(args, background, "load", start=start, sequence0=2)
    stop_probe_reports = threading.Event()
    reporter = threading.Thread(target=probes.report_loop, args=(start, stop_probe_reports), daemon=True)
    reporter.start()
    time.sleep(max(0.0, w0 - time.time()))
    rss = RssSampler(args.operator_pid)
    rss.start()
    a = snap.take()
    writes_before = probes.writes
    spacing = args.seconds / max(len(targets), 1)
    load_probe_results = run_probes(conn, args, probes, targets, w0 + spacing / 4, spacing,
                                    w0 + args.seconds + args.probe_timeout)
    time.sleep(max(0.0, w0 + args.seconds - time.time()))
    b = snap.take()
    w1 = b["t"]
    probe_writes = probes.writes - writes_before
    stop_probe_reports.set()
    load = writers.finish()
    reporter.join()
    rss_load = rss.finish()
    in_window = [w for w in load["writes"] if a["t"] <= w[0] < w1]
    seconds = sorted(load["per_second"].items())
    per_second = [v for k, v in seconds if a["t"] <= k and k + 1 <= w1]
    results["load"] = {
        "window": window_figures(a, b),
        "probes": load_probe_results,
        "rss_mib": rss_load,
        "offered_writes_per_s": n / args.interval,
        "achieved_writes_per_s": (len(in_window) + probe_writes) / (w1 - a["t"]),
        "writes_per_second_min_max": [min(per_second, default=0), max(per_second, default=0)],
        "writer_errors": load["errors"],
        "write_latency_ms": {"p50": percentile([w[1] for w in in_window], 50),
                             "p99": percentile([w[1] for w in in_window], 99)},
        "lateness_ms": {"p50": percentile([w[2] for w in in_window], 50),
                        "p99": percentile([w[2] for w in in_window], 99),
                        "max": max((w[2] for w in in_window), default=None)},
    }
    # The writers' CPU over the whole load phase (warm-up included), as a share of that time.
    results["load"]["window"]["cpu_cores"]["writer"] = load["cpu_s"] / (time.time() - start)

    # 4. Drain: after the last report, until every endpoint shows exactly its ledgers' sums.
    log("load stopped; waiting until every endpoint equals the sum of its ledgers")
    t_stop = time.time()
    a = snap.take()
    wrong = None
    while time.time() - t_stop < args.drain_timeout:
        wrong = consistent(conn, args.ns, args.per_endpoint)
        if wrong == 0:
            break
        time.sleep(1)
    results["drain"] = {"seconds": time.time() - t_stop if wrong == 0 else None, "endpoints_wrong": wrong}
    b = snap.take()
    results["drain"]["window"] = window_figures(a, b)
    results["operator_hwm_mib"] = proc_mib(args.operator_pid, "VmHWM")
    results["operator_rss_end_mib"] = proc_mib(args.operator_pid, "VmRSS")
    results["apiserver_rss_mib"] = proc_mib(args.apiserver_pid, "VmRSS")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)


# --- The report -----------------------------------------------------------------------------------

def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def probe_summary(probes):
    ok = [p["seconds"] for p in probes if p["seconds"] is not None]
    missed = len(probes) - len(ok)
    return {"n": len(probes), "p50": percentile(ok, 50), "p99": percentile(ok, 99), "max": max(ok, default=None),
            "min": min(ok, default=None), "timed_out": missed}


def writes_table(window):
    """Rows of write requests per second by verb and resource, the biggest first."""
    rows = [(k, v) for k, v in window["requests_per_s"].items() if k.split()[0] in WRITE_VERBS and v >= 0.05]
    return sorted(rows, key=lambda r: -r[1])


def cmd_report(args):
    with open(args.results) as f:
        r = json.load(f)
    with open(args.setup) as f:
        setup = json.load(f)
    load, idle, first, drain = r["load"], r["idle"], r["first_round"], r["drain"]
    lp, ip = probe_summary(load["probes"]), probe_summary(idle["probes"])
    lw, iw = load["window"], idle["window"]
    h = "##" if args.markdown else "###"

    def writes(window, who=None):
        """Write requests/s: all, the sidecars' (ledger status) or the operator's (the rest)."""
        return sum(v for k, v in window["requests_per_s"].items() if k.split()[0] in WRITE_VERBS
                   and (who is None or (k.split()[1] == "modelusages/status") == (who == "sidecars")))

    def rps(window, key):
        return window["requests_per_s"].get(key, 0.0)

    def reconciles(window, controller):
        rate = window["reconciles_per_s"].get(controller, 0.0)
        mean = window["reconcile_mean_ms"].get(controller)
        return f"{rate:,.1f}" + (f" ({mean:,.0f} ms)" if mean is not None and rate else "")

    timeout = r.get("probe_timeout_s", 120)

    def probes(ps, bold=False):
        b = "**" if bold else ""
        top = f"> {timeout:g}" if ps["timed_out"] else fmt(ps["max"], 2)
        return (f"{b}{fmt(ps['p50'], 2)} / {fmt(ps['p99'], 2)} / {top}{b} ({ps['n']} probes"
                + (f", {ps['timed_out']} unanswered after {timeout:g} s, not in p50 / p99" if ps["timed_out"] else "")
                + ")")

    lines = []
    p = lines.append
    p(f"{h} {r['ledgers']:,} ModelUsages across {r['endpoints']} ModelEndpoints, sidecars reporting every "
      f"{r['interval_s']:g} s")
    p("")
    p(f"The real API server (`e2e/cluster.sh`, an instance of its own, etcd inside) and the operator (release "
      f"build) on this {setup['cores']}-core machine, with the simulated sidecars (`e2e/bench/ledger.py`: "
      f"{r['processes']} processes of {r['threads']} threads, each report a server-side apply of the ledger's "
      f"status as the sidecar writes it) on the same cores; nothing pinned. {setup['date']}; load average before "
      f"the run {setup['loadavg']} (other work on the machine).")
    p("")
    p("| figure | after one report from every ledger, none since | under load (every ledger every "
      f"{r['interval_s']:g} s) |")
    p("|---|---:|---:|")
    p(f"| sidecars' status writes/s: offered {load['offered_writes_per_s']:,.0f}/s | 0 | "
      f"**{load['achieved_writes_per_s']:,.0f}/s achieved** (1-s min {load['writes_per_second_min_max'][0]:,}, "
      f"max {load['writes_per_second_min_max'][1]:,}) |")
    p(f"| a change to one ledger until its endpoint's `costThisMonth` shows it, s: p50 / p99 / max | {probes(ip)} | "
      f"{probes(lp, True)} |")
    p(f"| operator RSS, MiB (peak in the phase) | {idle['rss_mib']['last']:,.0f} ({idle['rss_mib']['max']:,.0f}) | "
      f"**{load['rss_mib']['last']:,.0f} ({load['rss_mib']['max']:,.0f})** |")
    p(f"| operator's own API writes/s | {writes(iw, 'operator'):,.1f} | **{writes(lw, 'operator'):,.1f}** |")
    p(f"| all API writes/s | {writes(iw):,.1f} | {writes(lw):,.1f} |")
    p(f"| operator's reads/s: GET Pod, GET ModelEndpoint, LIST all ModelUsages | {rps(iw, 'GET pods'):,.1f}, "
      f"{rps(iw, 'GET modelendpoints'):,.1f}, {rps(iw, 'LIST modelusages'):,.1f} | {rps(lw, 'GET pods'):,.1f}, "
      f"{rps(lw, 'GET modelendpoints'):,.1f}, {rps(lw, 'LIST modelusages'):,.1f} |")
    p(f"| ModelUsage LISTs served, MiB/s | {iw['modelusage_list_mib_per_s']:,.1f} | "
      f"{lw['modelusage_list_mib_per_s']:,.1f} |")
    p(f"| ModelEndpoint reconciles/s (mean time) | {reconciles(iw, 'ModelEndpoint')} | "
      f"{reconciles(lw, 'ModelEndpoint')} |")
    p(f"| Fold reconciles/s (mean time) | {reconciles(iw, 'Fold')} | {reconciles(lw, 'Fold')} |")
    p(f"| Ledger (Pod) reconciles/s (mean time) | {reconciles(iw, 'Ledger')} | {reconciles(lw, 'Ledger')} |")
    p(f"| Allocation rounds started/s (mean time); shares and grants written/s | {reconciles(iw, 'Allocation')}; "
      f"{iw['allocation_writes_per_s']:,.1f} | {reconciles(lw, 'Allocation')}; {lw['allocation_writes_per_s']:,.1f} |")
    p(f"| CPU, cores: operator / API server + etcd / simulated sidecars | {iw['cpu_cores']['operator']:.2f} / "
      f"{iw['cpu_cores']['apiserver']:.2f} / 0 | {lw['cpu_cores']['operator']:.2f} / "
      f"{lw['cpu_cores']['apiserver']:.2f} / {lw['cpu_cores']['writer']:.2f} |")
    p("")
    p(f"Measured over {iw['seconds']:.0f} s after the first reports and {lw['seconds']:.0f} s of load after a "
      f"{setup['warmup']} s "
      f"warm-up. The sidecars' writes under load: p50 {fmt(load['write_latency_ms']['p50'], 0)} ms, "
      f"p99 {fmt(load['write_latency_ms']['p99'], 0)} ms; sent late (their thread busy) by p50 "
      f"{fmt(load['lateness_ms']['p50'], 0)} ms, p99 {fmt(load['lateness_ms']['p99'], 0)} ms"
      + (f"; errors: {load['writer_errors']}" if load["writer_errors"] else "; no errors")
      + f". Operator RSS after the ledgers were created, before any report: {r['operator_rss_after_creation_mib']:,.0f}"
      f" MiB; its peak over the whole run (VmHWM): {r['operator_hwm_mib']:,.0f} MiB. API server + etcd RSS at the end: "
      f"{r['apiserver_rss_mib']:,.0f} MiB."
      + "".join(f" Reconcile errors {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in w["reconcile_errors"].items()) + "."
                for name, w in (("after the first reports", iw), ("under load", lw)) if w["reconcile_errors"])
      + "".join(f" Reconciles running at the end of the {name} window: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in w["in_flight_at_end"].items()) + "."
                for name, w in (("first", iw), ("load", lw)) if w.get("in_flight_at_end")))
    p("")
    p(f"{h} Setting up, and catching up")
    p("")
    p("| step | seconds |")
    p("|---|---:|")
    p(f"| {r['endpoints']} ModelEndpoints applied until all Ready | {setup['endpoints_ready_s']:.1f} |")
    p(f"| {r['ledgers']:,} Pods created (`kubectl create`, {setup['parallel']} in parallel) | {setup['pods_created_s']:.1f} |")
    p(f"| ... until all {r['ledgers']:,} ModelUsages were created by the operator (from the first Pod) | "
      f"{setup['ledgers_created_s']:.1f} |")
    p(f"| ... until every ledger held its share of the limits (`spec.allocation`) | {setup['allocated_s']:.1f} |")
    p(f"| first report of every ledger, as fast as the simulated sidecars go ({first['writes_per_s']:,.0f} writes/s) "
      f"| {first['seconds']:.1f} |")
    if "settle" in first:
        settle = first["settle"]
        p("| ... then until no endpoint reconcile or allocation round ran or started for 3 s | "
          + (fmt(settle["seconds"]) if settle["seconds"] is not None else f"still busy after {settle['timeout']:g}")
          + " |")
    else:  # results of the first version: only new starts were watched, not running reconciles
        p(f"| ... then until no endpoint reconcile had started for 3 s (reconciles still running, see the idle "
          f"column) | {fmt(first['operator_settled_after_s'])} |")
    p(f"| last report until every endpoint equalled the sums of its ledgers, to the micro-dollar | {fmt(drain['seconds'])}"
      + ("" if drain["seconds"] is not None else f" ({drain['endpoints_wrong']} endpoints still off)") + " |")
    p("")
    p(f"{h} API requests per second by kind (`apiserver_request_total`)")
    p("")
    p("| request | after the first reports | under load |")
    p("|---|---:|---:|")
    keys = sorted(set(lw["requests_per_s"]) | set(iw["requests_per_s"]),
                  key=lambda k: -(lw["requests_per_s"].get(k, 0) + iw["requests_per_s"].get(k, 0)))
    for k in keys:
        a, b = iw["requests_per_s"].get(k, 0), lw["requests_per_s"].get(k, 0)
        if max(a, b) >= 0.05 and not k.startswith("WATCH"):
            p(f"| {k} | {a:,.1f} | {b:,.1f} |")
    p("")
    p(f"ModelUsage watch events sent by the API server under load: {lw['modelusage_watch_events_per_s']:,.0f}/s "
      f"({lw['modelusage_watch_mib_per_s']:,.1f} MiB/s) to the operator's watches.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.page:
        section = ("## Ledger at scale (`make bench-ledger`)\n\n"
                   "Written by `make bench-ledger` (`e2e/bench/ledger.sh`); run it again to refresh this section. "
                   "What the figures mean for the report interval, staleness, API load and overshoot: "
                   "[limits-and-budgets.md](limits-and-budgets.md#trade-offs-report-interval-staleness-api-load-overshoot)."
                   "\n\n" + text)
        with open(args.page) as f:
            page = f.read()
        start = page.find("## Ledger at scale (`make bench-ledger`)")
        if start >= 0:
            nxt = page.find("\n## ", start + 3)
            page = page[:start] + section.rstrip("\n") + "\n" + (page[nxt:] if nxt >= 0 else "")
        else:
            raw = page.find("\n## Raw figures")
            page = (page[:raw + 1] + section.rstrip("\n") + "\n\n" + page[raw + 1:]) if raw >= 0 \
                else page.rstrip("\n") + "\n\n" + section
        with open(args.page, "w") as f:
            f.write(page)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifests")
    for a, t in (("dir", str), ("ns", str), ("endpoints", int), ("per_endpoint", int), ("batch", int)):
        m.add_argument(a, type=t)
    w = sub.add_parser("wait")
    for a, t in (("kubeconfig", str), ("ns", str), ("what", str), ("n", int), ("timeout", float)):
        w.add_argument(a, type=t)
    b = sub.add_parser("bench")
    b.add_argument("kubeconfig")
    b.add_argument("ns")
    b.add_argument("--endpoints", type=int, required=True)
    b.add_argument("--per-endpoint", type=int, required=True)
    b.add_argument("--interval", type=float, default=5.0)
    b.add_argument("--idle-seconds", type=float, default=20)
    b.add_argument("--warmup", type=float, default=15)
    b.add_argument("--seconds", type=float, default=90)
    b.add_argument("--probes", type=int, default=20)
    b.add_argument("--idle-probes", type=int, default=5)
    b.add_argument("--probe-timeout", type=float, default=120)
    b.add_argument("--poll", type=float, default=0.05)
    b.add_argument("--drain-timeout", type=float, default=300)
    b.add_argument("--settle-timeout", type=float, default=60)
    b.add_argument("--processes", type=int, default=2)
    b.add_argument("--threads", type=int, default=32)
    b.add_argument("--operator-pid", type=int, required=True)
    b.add_argument("--apiserver-pid", type=int, required=True)
    b.add_argument("--operator-metrics", required=True)
    b.add_argument("--out", required=True)
    c = sub.add_parser("cleanup")
    c.add_argument("kubeconfig")
    c.add_argument("ns")
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("setup")
    r.add_argument("--markdown", action="store_true")
    r.add_argument("--page")
    args = ap.parse_args()
    {"manifests": cmd_manifests, "wait": cmd_wait, "bench": cmd_bench, "cleanup": cmd_cleanup,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
