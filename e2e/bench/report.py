"""Writes the benchmark page and its plot from the raw figures of e2e/bench/compare.sh.

Usage: report.py WORK_DIR PAGE.md
WORK_DIR holds results.tsv (rows "metric, system, connections, value", one per run or sample, and
"meta, key, value") and section-NAME.md for each other benchmark that ran. The plot goes next to
the page as PAGE-latency.png. Every figure on the page is computed here from the raw figures; the
page's main table and the targets are printed too.
"""

import collections
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABEL = {
    "direct": "emulator direct (floor)",
    "direct-shared": "emulator direct, on wrk's core",
    "sidecar-invoke": "sidecar /invoke",
    "sidecar-beside": "sidecar /invoke, beside wrk",
    "sidecar-openai": "sidecar /v1/chat/completions",
    "litellm-bedrock": "LiteLLM /bedrock pass-through",
    "litellm-openai": "LiteLLM /v1/chat/completions",
}
SYSTEMS = list(LABEL)
# The floors: the emulator called directly on its own core, and on wrk's (where it is while a
# proxy is measured, core 0 idle). Only the first is measured streaming.
FLOORS = ("direct", "direct-shared")
SERVER = {"emulator": "emulator", "sidecar": "ai-sidecar", "litellm": "LiteLLM proxy"}
# Each sidecar route against LiteLLM's route of the same kind.
PAIRS = [
    ("sidecar-invoke", "litellm-bedrock", "native route: /invoke vs Bedrock pass-through"),
    ("sidecar-openai", "litellm-openai", "OpenAI route: /v1/chat/completions on both"),
]
# The targets for the sidecar against LiteLLM, in the same run.
TARGET_THROUGHPUT = 50  # at least this many times LiteLLM's requests/s
TARGET_ADDED_P50 = 30  # at most 1/this of LiteLLM's added p50
TARGET_RSS = 20  # at most 1/this of LiteLLM's peak RSS
CONNS = ["1", "16"]
# Above this share of both cores busy with every server idle, the page says the run was disturbed.
BUSY_WARNING = 10


def load(work):
    values, meta = collections.defaultdict(list), {}
    with open(os.path.join(work, "results.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "meta":
                meta[parts[1]] = parts[2]
            else:
                metric, system, conns, value = parts
                values[(metric, system, conns)].append(float(value))
    return values, meta


def fmt_ms(x):
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


def fmt_x(x):
    return f"{x:.1f}×" if x < 10 else f"{x:,.0f}×"


def fmt_n(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


class Figures:
    def __init__(self, values):
        self.values = values

    def __call__(self, metric, system, conns="-"):
        """The median of a figure's runs or samples."""
        return statistics.median(self.values[(metric, system, conns)])

    def added(self, metric, system, conns="-", floor="direct"):
        """A latency minus a floor's (by default the emulator called directly on its own core)."""
        return self(metric, system, conns) - self(metric, floor, conns)

    def has(self, metric, system, conns="-"):
        return bool(self.values.get((metric, system, conns)))


def targets(fig):
    """Rows (target, scope, measured, met); ratios to one decimal, so a miss never rounds to the target."""
    rows = []
    for ours, theirs, what in PAIRS:
        ratio = fig("rps", ours, "16") / fig("rps", theirs, "16")
        rows.append((f"throughput ≥ {TARGET_THROUGHPUT}× LiteLLM's", f"{what}, 16 connections",
                     f"{ratio:.1f}×", ratio >= TARGET_THROUGHPUT))
    for ours, theirs, what in PAIRS:
        a, b = fig.added("p50", ours, "1"), fig.added("p50", theirs, "1")
        ratio = b / a if a > 0 else float("inf")
        rows.append((f"added p50 ≤ 1/{TARGET_ADDED_P50} of LiteLLM's", f"{what}, 1 connection",
                     f"{fmt_ms(a)} ms vs {fmt_ms(b)} ms = 1/{ratio:.1f}", ratio >= TARGET_ADDED_P50))
    ratio = fig("rss_peak_mib", "litellm") / fig("rss_peak_mib", "sidecar")
    rows.append((f"RSS ≤ 1/{TARGET_RSS} of LiteLLM's", "peak, whole server",
                 f"{fig('rss_peak_mib', 'sidecar'):.1f} MiB vs {fig('rss_peak_mib', 'litellm'):.1f} MiB = 1/{ratio:.1f}",
                 ratio >= TARGET_RSS))
    return rows


def sidecar_targets(fig, rate=None):
    """The sidecar's own targets (docs/sidecar.md), from the same run: rows (target, measured, met).
    RATE: the fixed rate (requests/s) the emulator and the sidecar were also measured at, if any."""
    rps = fig("rps", "sidecar-invoke", "16")
    start = fig("coldstart_ms", "sidecar")
    rows = [("≥ 10,000 requests/s on one core (/invoke, 16 connections)", f"{rps:,.0f}", rps >= 10_000),
            ("ready within 100 ms (here: to the first answer, which comes after ready)", f"{fmt_ms(start)} ms",
             start <= 100)]
    for metric, limit in (("p50", 0.1), ("p99", 0.3)):
        for conns in CONNS:
            added = fig.added(metric, "sidecar-invoke", conns)
            rows.append((f"at most +{limit} ms {metric} over the emulator direct ({conns} conn.)",
                         f"{added:+.3f} ms", added <= limit))
            # At one connection wrk and the emulator on one core hand a request over without waking
            # the other core: a floor no extra hop can come near, so it is compared at 16 only.
            if conns != "1" and fig.has(metric, "direct-shared", conns):
                shared = fig.added(metric, "sidecar-invoke", conns, floor="direct-shared")
                rows.append((f"the same over the emulator on wrk's core ({conns} conn.)",
                             f"{shared:+.3f} ms", shared <= limit))
            if fig.has(metric, "sidecar-beside", conns):
                beside = fig.added(metric, "sidecar-beside", conns)
                rows.append((f"the same, the sidecar beside wrk and the emulator on its own core "
                             f"({conns} conn.)", f"{beside:+.3f} ms", beside <= limit))
        if rate and fig.has(f"fixed_{metric}", "sidecar-invoke", rate):
            for system, floor, where in (("sidecar-invoke", "direct", ""),
                                         ("sidecar-invoke", "direct-shared", ", over the emulator on oha's core"),
                                         ("sidecar-beside", "direct", ", the sidecar beside oha")):
                if fig.has(f"fixed_{metric}", system, rate) and fig.has(f"fixed_{metric}", floor, rate):
                    added = fig.added(f"fixed_{metric}", system, rate, floor=floor)
                    rows.append((f"the same at a fixed {int(rate):,} requests/s (16 conn.){where}",
                                 f"{added:+.3f} ms", added <= limit))
    for metric, what, limit in (("rss_idle_mib", "idle", 10), ("rss_peak_mib", "loaded (peak)", 15)):
        rows.append((f"RSS ≤ {limit} MiB {what}", f"{fig(metric, 'sidecar'):.1f} MiB", fig(metric, "sidecar") <= limit))
    return rows


def where_the_time_goes(fig, rate=None):
    """Computed sentences on what the sidecar's and LiteLLM's figures are made of."""
    out = []
    floor1, floor16 = fig("p50", "direct", "1"), fig("rps", "direct", "16")
    for ours, theirs, what in PAIRS:
        added, cpu = fig.added("p50", ours, "1"), fig("cpu_us_per_request", ours, "1") / 1000
        line = (f"- **Latency, {what}** (1 connection): the sidecar adds {fmt_ms(added)} ms to the emulator's "
                f"{fmt_ms(floor1)} ms at p50 and spends {cpu:.3f} ms of CPU a request, all threads "
                f"({100 * cpu / added:.0f}% of what it adds: with one request at a time the added time is mostly "
                f"its own work, waking up included).")
        if fig.has("upstream_mean_ms", ours, "1") and fig.has("mean_ms", ours, "1"):
            upstream, total, floor = (fig("upstream_mean_ms", ours, "1"), fig("mean_ms", ours, "1"),
                                      fig("mean_ms", "direct", "1"))
            if floor < upstream < total:
                line += (f" In means (wrk's, and the sidecar's own histogram of its calls to Bedrock, from the "
                         f"request prepared to the answer accounted): {fmt_ms(total)} ms a request through the "
                         f"sidecar, {fmt_ms(upstream)} ms of it in the call to Bedrock, which takes the emulator "
                         f"{fmt_ms(floor)} ms when called directly; so about {fmt_ms(upstream - floor)} ms goes to "
                         f"the sidecar's Bedrock client (signing, the second HTTP hop, parsing) and about "
                         f"{fmt_ms(total - upstream)} ms to the sidecar's server side (HTTP, JSON, the local "
                         f"guardrail, limits, cost accounting).")
            else:
                line += (f" No split between the sidecar's Bedrock client and its server side in this run: it "
                         f"needs means, and the tails moved them out of order (through the sidecar "
                         f"{fmt_ms(total)} ms, its calls to Bedrock {fmt_ms(upstream)} ms, the emulator directly "
                         f"{fmt_ms(floor)} ms).")
        their_added, their_cpu = fig.added("p50", theirs, "1"), fig("cpu_us_per_request", theirs, "1") / 1000
        line += (f" LiteLLM adds {fmt_ms(their_added)} ms and spends {fmt_ms(their_cpu)} ms of CPU a request "
                 f"({100 * their_cpu / their_added:.0f}% of what it adds): its time is its own Python code.")
        out.append(line)
    if fig.has("p50", "sidecar-beside", "1"):
        p50 = {c: fig.added("p50", "sidecar-beside", c) for c in CONNS}
        p99 = {c: fig.added("p99", "sidecar-beside", c) for c in CONNS}
        out.append(
            f"- **Placement** (/invoke): beside wrk on core 1, with the emulator alone on core 0 as when called "
            f"directly (a sidecar shares its app's cores; only the hop differs from the direct call), the sidecar "
            f"adds {p50['1']:+.3f} ms p50 and {p99['1']:+.3f} ms p99 at one connection, against "
            f"{fig.added('p50', 'sidecar-invoke', '1'):+.3f} and {fig.added('p99', 'sidecar-invoke', '1'):+.3f} on a "
            f"core of its own, where each request also wakes a third core. At 16 connections it adds "
            f"{p50['16']:+.3f} ms p50 and {p99['16']:+.3f} ms p99 there: wrk and the sidecar then share one core, "
            f"{fig('rps', 'sidecar-beside', '16'):,.0f} requests/s, and the latency is the queue for it.")
    if rate and fig.has("fixed_p50", "sidecar-invoke", rate) and fig.has("fixed_p50", "sidecar-beside", rate):
        on0 = {m: fig.added(f"fixed_{m}", "sidecar-invoke", rate) for m in ("p50", "p99")}
        beside = {m: fig.added(f"fixed_{m}", "sidecar-beside", rate) for m in ("p50", "p99")}
        out.append(
            f"- **At a fixed rate** (/invoke, {int(rate):,} requests/s over 16 connections, oha; see *Results*): "
            f"the sidecar adds {on0['p50']:+.3f} ms p50 and "
            f"{on0['p99']:+.3f} ms p99 on a core of its own, {beside['p50']:+.3f} and {beside['p99']:+.3f} beside "
            f"oha: each request finds the machine idle, so each hop also wakes a halted core.")
    for ours, theirs, what in PAIRS:
        c_ours, c_theirs = fig("cpu_us_per_request", ours, "16"), fig("cpu_us_per_request", theirs, "16")
        core0, core1 = fig("core0_busy_pct", ours, "16"), fig("core1_busy_pct", ours, "16")
        out.append(
            f"- **Throughput, {what}** (16 connections): the sidecar spends {fmt_n(c_ours)} µs of CPU a request, "
            f"LiteLLM {fmt_n(c_theirs)} µs ({fmt_x(c_theirs / c_ours)} more): a core of the sidecar's own work "
            f"would carry {1e6 / c_ours:,.0f} requests/s, one of LiteLLM's {1e6 / c_theirs:,.0f}. While the sidecar "
            f"was measured core 0 (the sidecar) was {core0:.0f}% busy and core 1 (wrk and the emulator, which alone "
            f"answers {floor16:,.0f} requests/s on a core of its own"
            + (f", {fig('rps', 'direct-shared', '16'):,.0f} on wrk's" if fig.has("rps", "direct-shared", "16") else "")
            + f") {core1:.0f}%"
            + (": the load side was the limit as much as the sidecar." if core1 >= core0 - 5 else "."))
    out.append(
        f"- **Memory**: the sidecar's RSS is {fig('rss_idle_mib', 'sidecar'):.1f} MiB idle and "
        f"{fig('rss_peak_mib', 'sidecar'):.1f} MiB at its peak; the emulator, a Rust server of the same stack without "
        f"an AWS SDK, PII regexes or a metrics registry, {fig('rss_peak_mib', 'emulator'):.1f} MiB; LiteLLM "
        f"{fig('rss_peak_mib', 'litellm'):.1f} MiB, most of it its Python modules, imported at start.")
    return out


def fmt_frac(ours, theirs):
    """OURS relative to THEIRS, for figures where smaller is better: 1/N, or N× when ours is larger."""
    if ours <= 0:
        return "—"
    r = theirs / ours
    return f"1/{r:.0f}" if r >= 2 else f"1/{r:.1f}" if r >= 1 else f"{1 / r:.1f}× (larger)"


def plural(n, word):
    return f"{n} {word}" + ("" if str(n) == "1" else "s")


STYLE = {
    "direct": ("tab:gray", ":"),
    "direct-shared": ("tab:gray", "-."),
    "sidecar-invoke": ("tab:blue", "-"),
    "sidecar-beside": ("tab:cyan", "-."),
    "sidecar-openai": ("tab:green", "-"),
    "litellm-bedrock": ("tab:red", "--"),
    "litellm-openai": ("tab:orange", "--"),
}


def plot(fig, path):
    percentiles = ["p50", "p75", "p90", "p99"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, conns in zip(axes, CONNS):
        for system in (s for s in SYSTEMS if fig.has("p50", s, conns)):
            color, style = STYLE[system]
            ys = [fig(p, system, conns) for p in percentiles]
            ax.plot(percentiles, ys, marker="o", color=color, linestyle=style, label=LABEL[system])
        ax.set_yscale("log")
        ax.set_title(f"{conns} connection{'s' if conns != '1' else ''}")
        ax.set_xlabel("latency percentile (wrk)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    figure.suptitle("Non-streaming request latency: one server core each, the same request")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)


def fixed_section(fixed_table, m):
    """The fixed-rate results and what they are, or nothing for a run without them."""
    if not fixed_table:
        return ""
    istio = ", the rate Istio publishes its sidecar latency at" if int(m["rate"]) == 1000 else ""
    return f"""At fixed rates (oha, open loop, 16 connections; medians of {plural(m['runs'], 'run')} of
{m['seconds_per_run']} s): every system at {int(m['rate_all']):,} requests/s, which LiteLLM's one worker can
serve, and the emulator and the sidecar at {int(m['rate']):,}{istio}.
wrk keeps every connection busy, so at 16 connections its latencies are each system's queue at full
load; here each system is sent the same requests at the same times. *Added* is over the emulator on
its own core at the same rate.

{fixed_table}

"""


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(work, page):
    values, meta = load(work)
    fig = Figures(values)
    png = os.path.splitext(page)[0] + "-latency.png"
    plot(fig, png)

    main_rows = []
    for conns in CONNS:
        for s in (s for s in SYSTEMS if fig.has("rps", s, conns)):
            added = "—" if s in FLOORS else f"{fig.added('p50', s, conns):+.3f}"
            main_rows.append((LABEL[s], conns, f"{fig('rps', s, conns):,.0f}", fmt_ms(fig("p50", s, conns)),
                              fmt_ms(fig("p99", s, conns)), added, fmt_n(fig("cpu_us_per_request", s, conns)),
                              f"{fig('core0_busy_pct', s, conns):.0f}% / {fig('core1_busy_pct', s, conns):.0f}%"))
    main_table = table(["system", "conns", "requests/s", "p50 ms", "p99 ms", "added p50 ms", "server CPU µs/request",
                        "core 0 / core 1 busy"], main_rows)
    rate_all, rate = meta.get("rate_all"), meta.get("rate")
    fixed_rows = []
    for at in (r for r in (rate_all, rate) if r):
        for s in (s for s in SYSTEMS if fig.has("fixed_p50", s, at)):
            added = ("—", "—") if s in FLOORS else tuple(
                f"{fig.added(f'fixed_{m}', s, at):+.3f}" for m in ("p50", "p99"))
            fixed_rows.append((LABEL[s].replace("wrk", "oha"), f"{int(at):,}", f"{fig('fixed_rps', s, at):,.0f}",
                               fmt_ms(fig("fixed_p50", s, at)), fmt_ms(fig("fixed_p99", s, at)), *added))
    fixed_table = table(["system", "sent/s", "answered/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"],
                        fixed_rows) if fixed_rows else ""
    stream_table = table(
        ["system", "time to first token ms", "added ms", "whole answer ms"],
        [(LABEL[s], fmt_ms(fig("ttft_ms", s)), "—" if s == "direct" else f"{fig.added('ttft_ms', s):+.2f}",
          fmt_ms(fig("stream_ms", s))) for s in SYSTEMS if fig.has("ttft_ms", s)])
    server_table = table(
        ["server", "processes", "RSS idle MiB", "RSS peak MiB", "cold start to first answer ms"],
        [(SERVER[s], f"{fig('processes', s):.0f}", f"{fig('rss_idle_mib', s):.1f}", f"{fig('rss_peak_mib', s):.1f}",
          fmt_ms(fig("coldstart_ms", s))) for s in SERVER])

    ratio_rows = []
    for ours, theirs, what in PAIRS:
        for conns in CONNS:
            a, b = fig.added("p50", ours, conns), fig.added("p50", theirs, conns)
            ratio_rows.append((what, conns, fmt_x(fig("rps", ours, conns) / fig("rps", theirs, conns)),
                               fmt_frac(a, b), fmt_frac(fig("p99", ours, conns), fig("p99", theirs, conns)),
                               fmt_frac(fig("cpu_us_per_request", ours, conns),
                                        fig("cpu_us_per_request", theirs, conns))))
    ratio_table = table(["pair", "conns", "requests/s", "added p50", "p99", "CPU per request"], ratio_rows)
    other_rows = []
    for ours, theirs, what in PAIRS:
        a, b = fig.added("ttft_ms", ours), fig.added("ttft_ms", theirs)
        other_rows.append((f"added time to first token, {what}", fmt_frac(a, b)))
    for ours, theirs, what in PAIRS:
        for metric in ("p50", "p99"):
            if rate_all and fig.has(f"fixed_{metric}", ours, rate_all) and fig.has(f"fixed_{metric}", theirs, rate_all):
                other_rows.append((f"added {metric} at {int(rate_all):,} requests/s, {what}",
                                   fmt_frac(fig.added(f"fixed_{metric}", ours, rate_all),
                                            fig.added(f"fixed_{metric}", theirs, rate_all))))
    for metric, what in (("rss_peak_mib", "RSS peak, whole server"), ("rss_idle_mib", "RSS idle, whole server"),
                         ("coldstart_ms", "cold start to first answer")):
        other_rows.append((what, fmt_frac(fig(metric, "sidecar"), fig(metric, "litellm"))))
    other_table = table(["figure", "sidecar ÷ LiteLLM"], other_rows)

    target_rows = targets(fig)
    missed = [r for r in target_rows if not r[3]]
    target_table = table(["target", "scope", "measured (sidecar vs LiteLLM)", "met"],
                         [(t, s, m, "met" if ok else "**missed**") for t, s, m, ok in target_rows])
    verdict = ("All targets are met." if not missed else
               f"{len(missed)} of {len(target_rows)} targets missed: "
               + "; ".join(f"{t} ({s}: {m})" for t, s, m, _ in missed) + ". *Where the time goes* below says why.")

    own_table = table(["target", "measured", "met"],
                      [(t, m, "met" if ok else "**missed**") for t, m, ok in sidecar_targets(fig, rate)])

    sections = []
    for name in ("operator", "webhook", "ledger", "tuning"):
        path = os.path.join(work, f"section-{name}.md")
        if os.path.exists(path):
            with open(path) as f:
                # Its headings go under this section's.
                text = "\n".join("##" + line if line.startswith("#") else line for line in f.read().strip().split("\n"))
            sections.append(f"### {name.capitalize()} (`e2e/bench/{name}.sh`)\n\n{text}")
    if not sections:
        sections.append("None yet: `make bench` runs `e2e/bench/operator.sh`, `e2e/bench/webhook.sh` and "
                        "`e2e/bench/ledger.sh` when they exist and adds the Markdown each prints here.")

    raw = [table(["figure", "system", "conns", "runs or samples"],
                 [(m, s, c, ", ".join(f"{v:g}" for v in vs)) for (m, s, c), vs in sorted(values.items())])]

    m = meta
    minutes = int(m["duration_s"]) / 60
    background = float(m["background_busy"].rstrip("%"))
    warning = "" if background <= BUSY_WARNING else f"""
> **This run was disturbed**: other work kept {m['background_busy']} of both cores busy while every
> server was idle, just before the measurements. Its figures, and the targets met or missed, say more
> about that work than about the systems: run `make bench` again on a quiet machine.
"""
    doc = f"""# Benchmarks: the sidecar and LiteLLM's proxy, side by side

Written by `make bench` (`e2e/bench/compare.sh`, then `e2e/bench/report.py`) on {m['date']}; every
figure is computed from that run's measurements. Do not edit by hand: run `make bench` again.
{warning}
## Targets

The sidecar against LiteLLM's proxy, pair by pair, in the same run. {verdict}

{target_table}
"""
    doc += "\n## Where the time goes\n\n" + "\n".join(where_the_time_goes(fig, rate)) + "\n"
    doc += f"""
## Results

Non-streaming, the same prompt to every system (`clients.py`), medians of {plural(m['runs'], 'run')}
of {m['seconds_per_run']} s per figure. *Added p50* is the system's p50 minus the emulator's own
(on its own core) at the same number of connections. *Server CPU* is the CPU time of the measured
server's process tree during the run divided by the requests it answered. The emulator is measured
twice: on core 0 as every server is, and on core 1 beside wrk with core 0 idle, which is where it
runs while a proxy is measured (two cores cannot give wrk, the emulator and a proxy one each).
*Sidecar /invoke, beside wrk* is the sidecar on core 1 with wrk, the emulator alone on core 0.

{main_table}

![Latency percentiles per system at 1 and 16 connections]({os.path.basename(png)})

{fixed_section(fixed_table, m)}Streaming: an answer of {m['stream_tokens']} tokens, one every {m['token_ms']} ms as the emulator paces
them (its timer's granularity makes the gaps a little longer); medians of {m['ttft_samples']} streams,
each on a new connection, from the request sent to the first text received and to the end.

{stream_table}

Servers (the emulator's figures are the floor's):

{server_table}

The sidecar's own targets (from its issue, see [sidecar.md](sidecar.md#benchmark)), in this run,
over the emulator on its own core and, at 16 connections, also over the emulator on wrk's core (at
one connection wrk and the emulator on one core hand each request over without waking the other:
a floor no extra hop can come near); and with the sidecar beside wrk, the emulator where the direct
call has it. Two cores cannot hold wrk, the emulator and a proxy apart, so each placement favours
one side: see *Placement* above.

{own_table}

## Ratios to LiteLLM

The sidecar's figure divided by LiteLLM's, pair by pair: requests/s (higher is better for us), the
rest as fractions (1/N: the sidecar's is N times smaller).

{ratio_table}

{other_table}

## Method

- **One run, one machine**: every system is measured in the same `make bench`, on the same release
  build, against the same emulator process. Runs are interleaved (run 1 of every system, then run 2, …)
  so drift in the machine spreads over all of them.
- **Cores**: the server measured is pinned to core 0 with `taskset` (every thread of its process
  tree); wrk, the Python clients, the emulator (when a proxy is measured) and the idle servers to
  core 1. The floor is measured in both places the emulator runs: alone on core 0, and on core 1
  with core 0 idle (*emulator direct, on wrk's core*). /invoke is measured once more with the
  sidecar on core 1 beside wrk and the emulator on core 0 (*sidecar /invoke, beside wrk*).
- **Load**: wrk, one thread, 1 and 16 keep-alive connections, {m['seconds_per_run']} s a run, after a
  2 s warm-up of every system. Any non-2xx answer or socket error fails the run. At fixed rates,
  oha (open loop, 16 connections, one thread on core 1), its latency counted from when it released
  each request, so a wait for a free connection counts; it releases them on tokio's millisecond
  timer (at 1,000 requests/s one each millisecond).
- **Requests**: the floor is Converse signed with SigV4 (botocore) and verified by the emulator; the
  sidecar's /invoke and LiteLLM's pass-through carry the same prompt and `maxTokens`, the
  OpenAI routes the same prompt and `max_tokens`; the emulator echoes the prompt. The sidecar runs
  standalone with the seed's ModelEndpoint and GuardrailPolicy (its local PII checks run on every
  request and answer; limits lifted so the limiter never refuses) and signs with static keys.
  LiteLLM has no guardrail, no database and no master key: the least work it can do.
- **LiteLLM**: `litellm[proxy]` pinned in `e2e/bench/litellm-requirements.txt`, one worker
  (`--num_workers 1`: uvicorn, one process), `LITELLM_LOG=WARNING` (no access log, as the sidecar
  logs at `warn`), the model `bedrock/converse/{{model}}` with `aws_bedrock_runtime_endpoint` at the
  emulator. Its pass-through uses a second deployment of the same model without `converse/`,
  because with it LiteLLM forwards to `/model/converse/{{model}}/converse`, which Bedrock does not
  serve; and `REPEATED_STREAMING_CHUNK_LIMIT` is raised, because LiteLLM ends a stream of 100
  identical chunks with an error and the emulator's filler answer is one token repeated.
- **RSS**: `VmRSS` (idle, after the warm-up) and `VmHWM` (peak, after everything) from
  `/proc/PID/status`, summed over the server's process tree (the *processes* column counts it).
- **Cold start**: from `exec` to the first 2xx answer to the benchmark's request (polled every
  millisecond from core 1), the server on core 0; median of {plural(m['runs'], 'start')}. The sidecar's
  includes reading its configuration; LiteLLM's, importing itself and its proxy.
- **Time to first token**: a Python client reading the raw stream: AWS event-stream frames from the
  emulator and LiteLLM's pass-through, Server-Sent Events from the others; every answer is checked
  to hold all {m['stream_tokens']} tokens.

## Machine and versions

- {m['cpu']}, {m['cores']} cores, {m['memory']}; {m['os']};
  {m['background_busy']} of both cores busy with the servers idle just before the measurements (other
  work on the machine shows there and in the *core busy* column)
- k8s-ai-operator commit {m['commit']}, {m['sidecar']}; {m['rustc']}
- LiteLLM: {m['litellm']}; {m['litellm_python']}
- load: {m['wrk']}{", " + m["oha"] if "oha" in m else ""}
- this run took {minutes:.1f} minutes, the release build included

## Other benchmarks

{chr(10).join(sections)}

## Raw figures

<details><summary>Every run and sample behind the medians</summary>

{raw[0]}

</details>
"""
    with open(page, "w") as f:
        f.write(doc)
    print(main_table)
    print()
    print(target_table)
    print()
    print(f"wrote {page} and {png}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
