"""The user documentation stays true to the code: the generated API reference is current, the alert
rules load and pass their unit tests, the Grafana dashboard lints, every error code of the sidecar is explained, every
relative link in docs/ leads somewhere, and the module map of docs/architecture.md names every
source file that exists and no other."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RULES = ROOT / "manifests" / "monitoring" / "alert-rules.yaml"
RULE_TESTS = ROOT / "manifests" / "monitoring" / "alert-rules.test.yaml"
SIDECAR_SRC = ROOT / "sidecar" / "src"


def test_api_reference_is_generated_from_the_crds():
    generated = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-api-reference.py")],
                               check=True, capture_output=True, text=True).stdout
    committed = (DOCS / "api-reference.md").read_text()
    assert generated == committed, (
        "docs/api-reference.md is stale: run `python3 scripts/gen-api-reference.py > docs/api-reference.md`")


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/install-deps.sh installs it (Debian package prometheus)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT)


def test_alert_rules_are_valid():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 4 rules found" in out.stdout, out.stdout


def test_alert_rules_pass_their_unit_tests():
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


# --- Sidecar error codes -------------------------------------------------------------------------

STRING = r'"(?:[^"\\]|\\[\s\S])*"'  # escapes include a backslash-newline continuation


def rust_sources() -> dict[pathlib.Path, str]:
    """The sidecar's sources without comments or test modules (a code there is not an API's)."""
    sources = {}
    for path in sorted(SIDECAR_SRC.rglob("*.rs")):
        text = path.read_text()
        text = text.split("#[cfg(test)]", 1)[0]
        text = re.sub(r"(?m)^\s*//.*$", "", text)
        sources[path] = text
    return sources


def call_arguments(text: str, open_paren: int) -> list[str]:
    """The top-level arguments of the call whose `(` is at `open_paren`, as source text."""
    args, depth, start, i = [], 0, open_paren + 1, open_paren
    while i < len(text):
        c = text[i]
        if c == '"':
            i = re.match(STRING, text[i:]).end() + i
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                args.append(text[start:i].strip())
                return args
        elif c == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    raise AssertionError(f"unbalanced call at offset {open_paren}")


def error_codes() -> set[str]:
    """Every `code` the sidecar can answer with. Each function or closure with a parameter
    `code: &'static str` (ApiError's constructors in errors.rs, and wrappers such as the limiter's
    `refuse`) is found by its signature; at each of its calls, a string literal in that position is
    a code. Codes set in a struct literal (`code: "..."`) or compared against (`.code == "..."`)
    count too."""
    sources = rust_sources()
    errors_rs = SIDECAR_SRC / "errors.rs"
    signature = re.compile(r"(?:fn\s+(\w+)\s*(?:<[^>]*>)?\s*\(|let\s+(\w+)\s*=\s*(?:move\s*)?\|)([^)|]*)")
    callers: list[tuple[re.Pattern, int, pathlib.Path | None]] = []
    for path, text in sources.items():
        for m in signature.finditer(text):
            params = [p.strip() for p in m.group(3).split(",")]
            for index, param in enumerate(params):
                if not re.fullmatch(r"code\s*:\s*&'static\s+str", param):
                    continue
                if m.group(1) and path == errors_rs:
                    # ApiError's own: `ApiError::name(` anywhere, `Self::name(` inside errors.rs.
                    callers.append((re.compile(rf"\bApiError::{m.group(1)}\("), index, None))
                    callers.append((re.compile(rf"\bSelf::{m.group(1)}\("), index, errors_rs))
                else:
                    # A wrapper: called by its bare name in the file that defines it.
                    callers.append((re.compile(rf"(?<![\w:.]){m.group(1) or m.group(2)}\("), index, path))
    names = {c[0].pattern for c in callers}
    assert any("ApiError::new" in n for n in names) and any("rate_limited" in n for n in names), (
        f"the parser no longer finds ApiError's constructors: {sorted(names)}")
    codes: set[str] = set()
    for path, text in sources.items():
        for pattern, index, only_in in callers:
            if only_in is not None and only_in != path:
                continue
            for m in pattern.finditer(text):
                args = call_arguments(text, m.end() - 1)
                if index < len(args) and re.fullmatch(STRING, args[index]):
                    codes.add(args[index][1:-1])
        codes.update(re.findall(r'\bcode\s*[!=]=\s*"([a-z_]+)"', text))
        codes.update(re.findall(r'\bcode\s*:\s*"([a-z_]+)"', text))
    return codes


def test_every_sidecar_error_code_is_in_the_troubleshooting_guide():
    codes = error_codes()
    # The parser must keep seeing the codes of every kind of constructor, or it proves nothing.
    for known in ["invalid_request", "endpoint_not_allowed", "rate_limited", "budget_exceeded",
                  "credentials_unavailable", "guardrail_blocked", "upstream_timeout"]:
        assert known in codes, f"the parser missed {known}: found {sorted(codes)}"
    guide = (DOCS / "troubleshooting.md").read_text()
    missing = sorted(c for c in codes if f"`{c}`" not in guide)
    assert not missing, f"docs/troubleshooting.md does not explain: {missing}"


# --- Links ---------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_code(markdown: str) -> str:
    markdown = re.sub(r"(?ms)^(```|~~~).*?^\1", "", markdown)
    return re.sub(r"`[^`\n]*`", "", markdown)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in without_fences(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    result.update(re.findall(r'<a\s+(?:name|id)="([^"]+)"', path.read_text()))
    return result


def without_fences(markdown: str) -> str:
    return re.sub(r"(?ms)^(```|~~~).*?^\1", "", markdown)


def relative_links() -> list[tuple[pathlib.Path, str]]:
    links = []
    for doc in sorted(DOCS.glob("*.md")):
        for target in LINK.findall(without_code(doc.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
                continue
            links.append((doc, target))
    return links


DASHBOARD = ROOT / "manifests" / "monitoring" / "grafana-dashboard.json"
# Grafana's own variables, as a query would have them substituted.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$namespace": ".*"}


def exported_metrics() -> set[str]:
    """Every metric the operator and the sidecar register, with the suffixes their types add."""
    names = set()
    for source in (ROOT / "operator" / "src" / "metrics.rs", ROOT / "sidecar" / "src" / "metrics.rs"):
        for base in re.findall(r'register\(\s*"([a-z_]+)"', source.read_text()):
            names |= {f"k8s_ai_operator_{base}{suffix}" for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    return names


def test_grafana_dashboard_lints(tmp_path):
    """What a dashboard linter checks, with tools that run here (grafana/dashboard-linter's module
    is not served to this machine): its shape, a datasource variable on every query, and each
    query valid PromQL (promtool, as recording rules) over metrics the code exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    exprs = []
    for panel in panels:
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'namespace=~"$namespace"' in target["expr"], f"{panel['title']} ignores the namespace variable"
            exprs.append(target["expr"])
    # Panels do not overlap.
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    known = exported_metrics()
    assert "k8s_ai_operator_spend_dollars" in known and "k8s_ai_operator_bedrock_invocations_total" in known
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown variable in {expr}"
        used = set(re.findall(r"\bk8s_ai_operator_[a-z_]+", expr))
        assert used <= known, f"metrics the code does not export: {sorted(used - known)}"
        rules["groups"][0]["rules"].append({"record": f"dashboard:panel_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard-rules.yaml"
    rules_file.write_text(json.dumps(rules))
    out = promtool("check", "rules", str(rules_file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout


def test_relative_links_in_docs_resolve():
    links = relative_links()
    assert len(links) > 20, f"the link parser found only {links}"
    broken = []
    for doc, target in links:
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{doc.name}: {target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --- Module map ----------------------------------------------------------------------------------

CRATES = ["api", "operator", "sidecar", "e2e", "webhook-certs", "fuzz"]


def module_map() -> list[str]:
    """The files named in the first column of the tables under docs/architecture.md's
    "Module map" heading, in order."""
    text = (DOCS / "architecture.md").read_text()
    m = re.search(r"(?ms)^## Module map\n(.*?)(?=^## )", text)
    assert m, "docs/architecture.md has no \"## Module map\" section followed by another section"
    return re.findall(r"(?m)^\|\s*`([^`]+)`\s*\|", m.group(1))


def source_files() -> set[str]:
    files = {p for crate in CRATES for p in (ROOT / crate / "src").rglob("*.rs")}
    files |= set((ROOT / "e2e" / "python").glob("*.py"))
    return {p.relative_to(ROOT).as_posix() for p in files}


def test_module_map_names_every_source_file_and_no_other():
    named = module_map()
    existing = source_files()
    assert len(existing) > 80 and "sidecar/src/pii/detect.rs" in existing, f"found only {sorted(existing)}"
    duplicates = sorted({f for f in named if named.count(f) > 1})
    missing = sorted(existing - set(named))
    stale = sorted(set(named) - existing)
    assert not (duplicates or missing or stale), (
        "docs/architecture.md#module-map is out of date:\n"
        f"  not in the map: {missing}\n  in the map, no such file: {stale}\n  named twice: {duplicates}")


@pytest.mark.parametrize("heading,anchor", [
    ("## Controllers (`run`)", "controllers-run"),
    ("## Metrics (`:8091/metrics`)", "metrics-8091metrics"),
    ("### `credentials_unavailable`", "credentials_unavailable"),
    ("## 1. The cluster's IAM OIDC provider", "1-the-clusters-iam-oidc-provider"),
    ("## What holds today, what is planned", "what-holds-today-what-is-planned"),
])
def test_anchors_are_computed_as_github_does(heading, anchor):
    assert slug(heading.lstrip("#")) == anchor
