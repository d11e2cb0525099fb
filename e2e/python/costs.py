"""What the sidecar counted and what Bedrock's counts cost, for the tests that check exact cost."""

import urllib.request
from decimal import Decimal


def cost_counted(admin: str) -> Decimal:
    """The cost on the sidecar's metrics page, summed over its endpoints (a float counter: equal
    to an exact sum only within its precision)."""
    with urllib.request.urlopen(f"{admin}/metrics") as r:
        page = r.read().decode()
    return sum((Decimal(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                if line.startswith("k8s_ai_operator_bedrock_invocation_cost_dollars_total{")), Decimal(0))


def haiku_cost(record) -> Decimal:
    """An emulator record's cost on Claude Haiku 4.5 through its US profile: $1.10 / $5.50 per
    million tokens."""
    return (Decimal(record["inputTokens"]) * Decimal("1.1") + Decimal(record["outputTokens"]) * Decimal("5.5")) / 10**6
