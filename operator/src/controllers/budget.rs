//! Budget grants: each pod may spend, per day and per month, up to its grant in its ledger's
//! `spec.budgetGrant`, which its sidecar checks before every call (reserving the call's worst
//! case) with no network call on the request path.
//!
//! All grants together with what retired pods spent never pass the budget, so the endpoint's
//! spend cannot pass it either, whatever the number of pods. A pod refused for want of grant
//! reports the worst case it needed (`budgetWanted`) and is served first; the rest of the budget
//! is shared out evenly, a slice always kept back for new pods. When what a refused pod needs is
//! held as others' unspent headroom, the largest headrooms are cut back to a slice: a grant is
//! lowered only once its sidecar has reported enforcing it (`status.holding.budgetGrant`), and
//! what it frees is handed on only once the sidecar reports enforcing the lower one.

use k8s_ai_api::{
    MONEY_MAX_SCALE, ModelEndpoint, ModelUsage, ModelUsageStatus, Money,
    model_usage::{BudgetGrant, PeriodUsage},
};
use rust_decimal::{Decimal, RoundingStrategy};

/// A pod's unspent grant is topped up to at most this fraction of the budget (1/20) per round.
pub const HEADROOM_PARTS: u32 = 20;

/// One pod's position in one period.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// Spent (reported) plus reserved by calls in flight.
    pub spent: Decimal,
    /// Its grant for this period, if it has one.
    pub grant: Option<Decimal>,
    /// The worst case of a call it refused for want of grant (zero: none).
    pub wanted: Decimal,
    /// The grant its sidecar last reported enforcing for this period (zero: none, or no report).
    pub enforced: Decimal,
    /// Whether its sidecar enforces the grant in the spec (or has not started): only then may
    /// the grant be lowered.
    pub acked: bool,
    /// Whether its sidecar has stopped (its last report closed the ledger): it spends nothing
    /// more, so its grant comes down to what it spent and it gets no headroom.
    pub closed: bool,
}

/// New grants for one period's `budget`, of which retired pods used `retired`, pods in the order
/// of `holders`; and whether the budget can no longer pay for a call a pod wants.
pub fn share(budget: Decimal, retired: Decimal, holders: &[Holder]) -> (Vec<Decimal>, bool) {
    // A grant never sits below what its pod has spent; what a pod may spend is the most of its
    // grant and the one its sidecar still enforces.
    let mut grants: Vec<Decimal> = holders
        .iter()
        .map(|h| {
            if h.closed {
                h.spent
            } else {
                h.grant.unwrap_or(h.spent).max(h.spent)
            }
        })
        .collect();
    let committed: Decimal = holders
        .iter()
        .zip(&grants)
        .map(|(h, g)| {
            if h.closed {
                h.spent
            } else {
                (*g).max(h.enforced)
            }
        })
        .sum();
    let mut pool = (budget - retired - committed).max(Decimal::ZERO);
    let unspent = budget - retired - holders.iter().map(|h| h.spent).sum::<Decimal>();
    let pods = Decimal::from(holders.iter().filter(|h| !h.closed).count() + 1);
    let slice = (unspent.max(Decimal::ZERO) / pods)
        .min(budget / Decimal::from(HEADROOM_PARTS))
        .round_dp_with_strategy(MONEY_MAX_SCALE, RoundingStrategy::ToZero);
    // What pods lack that the free budget cannot pay (a call refused, or headroom below half a
    // slice, as a pod that came after the budget was all granted has): the largest headrooms
    // are cut back to a slice (where the sidecar enforces the current grant). What that frees
    // is handed on in a later round, once the sidecars report enforcing the lower grants.
    let short: Decimal = holders
        .iter()
        .zip(&grants)
        .filter(|(h, _)| !h.closed)
        .map(|(h, g)| {
            let headroom = *g - h.spent;
            if h.wanted > headroom || headroom * Decimal::TWO < slice {
                h.wanted.max(slice) - headroom
            } else {
                Decimal::ZERO
            }
        })
        .sum();
    let cut_back = |h: &Holder, g: Decimal| -> Decimal {
        if h.acked && h.wanted.is_zero() {
            (g - h.spent - slice).max(Decimal::ZERO)
        } else {
            Decimal::ZERO
        }
    };
    let reclaimable: Decimal = holders
        .iter()
        .zip(&grants)
        .map(|(h, g)| cut_back(h, *g))
        .sum();
    let free_before = pool;
    if short > pool {
        for (h, g) in holders.iter().zip(grants.iter_mut()) {
            *g -= cut_back(h, *g);
        }
    }
    // First the calls pods were refused, smallest first so most of them get served.
    let mut order: Vec<usize> = (0..holders.len()).collect();
    order.sort_by_key(|&i| holders[i].wanted);
    for &i in &order {
        let h = &holders[i];
        let need = h.spent + h.wanted - grants[i];
        if !h.closed && h.wanted > Decimal::ZERO && need > Decimal::ZERO && need <= pool {
            grants[i] += need;
            pool -= need;
        }
    }
    // Then headroom for each pod: an even slice of what is unspent (one slice kept back for a
    // newcomer), at most a twentieth of the budget. Small grants renewed at every round keep an
    // idle pod from sitting on budget a busy one needs.
    for (i, h) in holders.iter().enumerate().filter(|(_, h)| !h.closed) {
        let raise = (h.spent + slice - grants[i]).max(Decimal::ZERO).min(pool);
        grants[i] += raise;
        pool -= raise;
    }
    // Exhausted: nothing is left, or no call a pod was refused can be paid, not even with the
    // headroom that can be cut back from the others.
    let headroom = |i: usize| grants[i] - holders[i].spent;
    let smallest_unmet = (0..holders.len())
        .filter(|&i| !holders[i].closed && holders[i].wanted > headroom(i))
        .map(|i| holders[i].wanted - headroom(i))
        .min();
    let exhausted = unspent <= Decimal::ZERO
        || smallest_unmet.is_some_and(|need| free_before + reclaimable < need);
    (grants, exhausted)
}

/// What the budget says for an endpoint: each ledger's grant, and which periods are exhausted.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (ledger name, its grant), for every live ledger of the endpoint.
    pub grants: Vec<(String, BudgetGrant)>,
    pub day_exhausted: bool,
    pub month_exhausted: bool,
}

/// A grant's amount for `period` (a day, or a month), if it is for that period.
fn grant_in(grant: &BudgetGrant, period: &str, is_day: bool) -> Option<Money> {
    if is_day {
        grant.daily.filter(|_| grant.day.as_deref() == Some(period))
    } else {
        grant
            .monthly
            .filter(|_| grant.month.as_deref() == Some(period))
    }
}

fn period_cost(usage: Option<&PeriodUsage>, period: &str) -> Decimal {
    usage
        .filter(|u| u.period == period)
        .map_or(Decimal::ZERO, |u| u.cost.amount())
}

/// One ledger's position in `period` (the day, or the month; `day` is today, when a refused
/// call counts).
fn holder(l: &ModelUsage, period: &str, is_day: bool, day: &str) -> Holder {
    let status = l.status.clone().unwrap_or_default();
    let used = if is_day {
        status.day.as_ref()
    } else {
        status.month.as_ref()
    };
    let reserved = status.reserved.map_or(Decimal::ZERO, Money::amount);
    let grant = l
        .spec
        .budget_grant
        .as_ref()
        .and_then(|g| grant_in(g, period, is_day));
    // What a pod wanted counts in the day it was refused (the day counters' period).
    let wanted = status
        .budget_wanted
        .filter(|_| status.day.as_ref().is_some_and(|d| d.period == day))
        .map_or(Decimal::ZERO, Money::amount);
    let reported = status.sequence > 0;
    let enforced = status
        .holding
        .as_ref()
        .and_then(|h| h.budget_grant.as_ref())
        .and_then(|g| grant_in(g, period, is_day))
        .map(Money::amount);
    let grant = grant.map(Money::amount);
    Holder {
        spent: period_cost(used, period) + reserved,
        grant,
        wanted,
        // A sidecar that does not report what it enforces: assume its grant.
        enforced: match (reported, status.holding.is_some()) {
            (false, _) => Decimal::ZERO,
            (true, true) => enforced.unwrap_or_default(),
            (true, false) => grant.unwrap_or_default(),
        },
        acked: !reported || status.holding.is_none() || enforced == grant,
        closed: status.closed,
    }
}

/// Grants for the ledgers of `endpoint` (all of them, those being deleted included: they still
/// hold what they spent) in the periods `day` and `month`. `endpoint` must have been read after
/// `ledgers` (see `ledger::endpoint_usage`), so a ledger folded meanwhile counts once.
pub fn plan(endpoint: &ModelEndpoint, ledgers: &[&ModelUsage], day: &str, month: &str) -> Plan {
    let Some(budget) = endpoint.spec.cost_budget.as_ref() else {
        return Plan::default();
    };
    let retired = endpoint.status.as_ref().and_then(|s| s.retired.as_ref());
    let folded = |l: &ModelUsage| {
        retired.is_some_and(|r| {
            l.metadata
                .uid
                .as_ref()
                .is_some_and(|u| r.folded.contains(u))
        })
    };
    let ledgers: Vec<&ModelUsage> = ledgers.iter().copied().filter(|l| !folded(l)).collect();
    let holders = |period: &str, is_day: bool| -> Vec<Holder> {
        ledgers
            .iter()
            .map(|l| holder(l, period, is_day, day))
            .collect()
    };
    let retired_cost = |is_day: bool, period: &str| {
        retired.map_or(Decimal::ZERO, |r| {
            period_cost(
                if is_day {
                    r.day.as_ref()
                } else {
                    r.month.as_ref()
                },
                period,
            )
        })
    };
    let mut plan = Plan {
        grants: ledgers
            .iter()
            .map(|l| {
                (
                    l.metadata.name.clone().unwrap_or_default(),
                    BudgetGrant::default(),
                )
            })
            .collect(),
        ..Plan::default()
    };
    if let Some(daily) = budget.daily {
        let (grants, exhausted) =
            share(daily.amount(), retired_cost(true, day), &holders(day, true));
        for ((_, g), amount) in plan.grants.iter_mut().zip(grants) {
            g.day = Some(day.to_owned());
            g.daily = Money::new(amount);
        }
        plan.day_exhausted = exhausted;
    }
    if let Some(monthly) = budget.monthly {
        let (grants, exhausted) = share(
            monthly.amount(),
            retired_cost(false, month),
            &holders(month, false),
        );
        for ((_, g), amount) in plan.grants.iter_mut().zip(grants) {
            g.month = Some(month.to_owned());
            g.monthly = Money::new(amount);
        }
        plan.month_exhausted = exhausted;
    }
    plan
}

/// Whether `planned` is worth writing over `ledger`'s current grant. Grants are topped up every
/// round, but a write (and the watch events it brings) is spent only when it matters: a new
/// period, a call the pod was refused, or headroom below half of what the top-up would give (a
/// top-up that gives none, the budget being all held, changes nothing the sidecar can use).
/// Not writing keeps a grant lower than planned, never higher, so the budget still holds.
pub fn top_up_due(ledger: &ModelUsage, planned: &BudgetGrant, day: &str, month: &str) -> bool {
    let Some(current) = ledger.spec.budget_grant.as_ref() else {
        return true;
    };
    if current == planned {
        return false;
    }
    if current.day != planned.day || current.month != planned.month {
        return true;
    }
    // A grant cut back for a pod that was refused.
    if planned.daily < current.daily || planned.monthly < current.monthly {
        return true;
    }
    let status = ledger.status.clone().unwrap_or_default();
    let refused = status
        .budget_wanted
        .filter(|_| status.day.as_ref().is_some_and(|d| d.period == day))
        .is_some_and(|w| w.amount() > Decimal::ZERO);
    if refused {
        return true;
    }
    let reserved = status.reserved.map_or(Decimal::ZERO, Money::amount);
    let low =
        |now: Option<Money>, then: Option<Money>, used: Option<&PeriodUsage>, period: &str| {
            let spent = period_cost(used, period) + reserved;
            let (now, then) = (
                now.map_or(Decimal::ZERO, Money::amount),
                then.map_or(Decimal::ZERO, Money::amount),
            );
            let give = then - spent;
            then > now && give > Decimal::ZERO && (now - spent) * Decimal::TWO < give
        };
    low(current.daily, planned.daily, status.day.as_ref(), day)
        || low(
            current.monthly,
            planned.monthly,
            status.month.as_ref(),
            month,
        )
}

/// The most a retiring ledger may have spent beyond what it reported: nothing if its sidecar
/// closed it, else what was left of its grant (the smaller of the day's and the month's).
pub fn unreported_bound(ledger: &ModelUsage, day: &str, month: &str) -> Decimal {
    let status = ledger.status.clone().unwrap_or_default();
    if status.closed {
        return Decimal::ZERO;
    }
    // The grant in the spec, or the one its sidecar enforced if that left more (a lowered grant
    // it had not yet reported enforcing).
    let enforced = status
        .holding
        .as_ref()
        .and_then(|h| h.budget_grant.as_ref());
    [ledger.spec.budget_grant.as_ref(), enforced]
        .into_iter()
        .flatten()
        .map(|grant| grant_left(grant, &status, day, month))
        .max()
        .unwrap_or_default()
}

/// What `grant` leaves unspent: the smaller of the day's and the month's.
fn grant_left(grant: &BudgetGrant, status: &ModelUsageStatus, day: &str, month: &str) -> Decimal {
    let left =
        |granted: Option<Money>, period: Option<&str>, now: &str, used: Option<&PeriodUsage>| {
            granted
                .filter(|_| period == Some(now))
                .map(|g| (g.amount() - period_cost(used, now)).max(Decimal::ZERO))
        };
    let day_left = left(grant.daily, grant.day.as_deref(), day, status.day.as_ref());
    let month_left = left(
        grant.monthly,
        grant.month.as_deref(),
        month,
        status.month.as_ref(),
    );
    match (day_left, month_left) {
        (Some(d), Some(m)) => d.min(m),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => Decimal::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn holder(spent: &str, grant: Option<&str>, wanted: &str) -> Holder {
        Holder {
            spent: d(spent),
            grant: grant.map(d),
            wanted: d(wanted),
            enforced: grant.map(d).unwrap_or_default(),
            acked: true,
            closed: false,
        }
    }

    #[test]
    fn a_stopped_pods_headroom_goes_to_the_others() {
        // Two pods hold the whole budget; the first has stopped after spending 0.002.
        let stopped = Holder {
            closed: true,
            ..holder("0.002", Some("0.005"), "0")
        };
        let (grants, exhausted) = share(
            d("0.01"),
            Decimal::ZERO,
            &[
                stopped,
                holder("0", Some("0.005"), "0"),
                holder("0", None, "0"),
            ],
        );
        assert_eq!(grants[0], d("0.002"), "down to what it spent, no headroom");
        assert!(
            grants[2] > Decimal::ZERO,
            "the newcomer gets headroom: {grants:?}"
        );
        assert!(grants.iter().sum::<Decimal>() <= d("0.01"), "{grants:?}");
        assert!(!exhausted);
    }

    #[test]
    fn grants_never_pass_the_budget_and_keep_a_slice_back() {
        let (grants, exhausted) = share(d("0.01"), Decimal::ZERO, &vec![holder("0", None, "0"); 5]);
        assert_eq!(
            grants,
            vec![d("0.0005"); 5],
            "a twentieth of the budget each"
        );
        let (grants, _) = share(d("0.01"), Decimal::ZERO, &vec![holder("0", None, "0"); 30]);
        assert_eq!(
            grants,
            vec![d("0.000322"); 30],
            "an even slice when that is less"
        );
        assert!(!exhausted);
        assert!(grants.iter().sum::<Decimal>() <= d("0.01"));
    }

    #[test]
    fn grants_only_grow_and_follow_spend() {
        let holders = [
            holder("0.0015", Some("0.001666"), "0"),
            holder("0", Some("0.001666"), "0"),
        ];
        let (grants, _) = share(d("0.01"), Decimal::ZERO, &holders);
        // Each pod's headroom grows back to a twentieth of the budget.
        assert_eq!(grants, vec![d("0.002"), d("0.001666")]);
        let shrinking = [holder("0", Some("0.009"), "0"), holder("0", None, "0")];
        let (grants, _) = share(d("0.01"), Decimal::ZERO, &shrinking);
        assert_eq!(grants[0], d("0.009"), "a grant never shrinks");
        assert_eq!(grants[1], d("0.0005"), "the other gets its headroom");
    }

    #[test]
    fn a_refused_call_is_served_first_and_exhaustion_is_reported() {
        let holders = [
            holder("0.004", Some("0.0045"), "0.002"),
            holder("0.004", Some("0.0045"), "0"),
        ];
        let (grants, exhausted) = share(d("0.02"), Decimal::ZERO, &holders);
        assert_eq!(grants[0], d("0.006"), "spent plus the call it wanted");
        assert!(!exhausted);
        let (_, exhausted) = share(d("0.01"), Decimal::ZERO, &holders);
        assert!(exhausted, "0.001 unheld cannot pay for a 0.002 call");
        let holders = [
            holder("0.0095", Some("0.0095"), "0.002"),
            holder("0", None, "0"),
        ];
        let (grants, exhausted) = share(d("0.01"), Decimal::ZERO, &holders);
        assert!(exhausted, "0.0005 left cannot pay for a 0.002 call");
        assert!(grants.iter().sum::<Decimal>() <= d("0.01"), "{grants:?}");
    }

    #[test]
    fn a_late_pod_is_granted_from_headroom_cut_back_once_its_holders_enforce_less() {
        // Twenty idle pods were granted the whole $10 as they came; a twenty-first is refused a
        // $0.0226 call. Grants that only grew would leave it refused all day.
        let mut holders = vec![holder("0", Some("0.50"), "0"); 20];
        holders.push(holder("0", None, "0.0226"));
        let (cut, exhausted) = share(d("10"), Decimal::ZERO, &holders);
        assert!(!exhausted, "the budget is unspent: not exhausted");
        assert!(cut[..20].iter().all(|g| *g < d("0.50")), "{cut:?}");
        assert_eq!(
            cut[20],
            Decimal::ZERO,
            "nothing handed on while the sidecars still enforce $0.50"
        );
        // The twenty report enforcing the lower grants: what they freed pays the late pod's call.
        for (h, g) in holders.iter_mut().zip(&cut).take(20) {
            h.grant = Some(*g);
            h.enforced = *g;
        }
        let (grants, _) = share(d("10"), Decimal::ZERO, &holders);
        assert!(grants[20] >= d("0.0226"), "{grants:?}");
        let committed: Decimal = holders
            .iter()
            .zip(&grants)
            .map(|(h, g)| (*g).max(h.enforced))
            .sum();
        assert!(committed <= d("10"), "{committed}");
    }

    #[test]
    fn a_grant_its_sidecar_may_not_enforce_yet_is_never_cut() {
        let mut holders = vec![holder("0", Some("0.50"), "0"); 20];
        for h in &mut holders {
            h.acked = false;
            h.enforced = d("0.40");
        }
        holders.push(holder("0", None, "0.0226"));
        let (grants, _) = share(d("10"), Decimal::ZERO, &holders);
        assert!(grants[..20].iter().all(|g| *g == d("0.50")), "{grants:?}");
        assert_eq!(grants[20], Decimal::ZERO);
    }

    fn ledger(grant: Option<(&str, &str)>, spent: &str, wanted: Option<&str>) -> ModelUsage {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ai.kernelpanic09.io/v1alpha1", "kind": "ModelUsage",
            "metadata": { "name": "p.e", "namespace": "ns" },
            "spec": { "podName": "p", "podUid": "u", "endpoint": "e",
                      "budgetGrant": grant.map(|(day, daily)| serde_json::json!({ "day": day, "daily": daily })) },
            "status": { "day": { "period": "2026-11-26", "invocations": 1, "cost": spent }, "budgetWanted": wanted },
        }))
        .unwrap()
    }

    #[test]
    fn a_top_up_is_written_when_headroom_runs_low_or_a_call_was_refused() {
        let planned = BudgetGrant {
            day: Some("2026-11-26".into()),
            daily: Money::new(d("0.30")),
            ..BudgetGrant::default()
        };
        let due = |l: &ModelUsage| top_up_due(l, &planned, "2026-11-26", "2026-11");
        assert!(due(&ledger(None, "0", None)), "a pod without a grant");
        assert!(
            due(&ledger(Some(("2026-11-25", "0.30")), "0", None)),
            "yesterday's grant"
        );
        assert!(
            !due(&ledger(Some(("2026-11-26", "0.30")), "0.10", None)),
            "already that"
        );
        assert!(
            !due(&ledger(Some(("2026-11-26", "0.25")), "0.10", None)),
            "0.15 of headroom left, the top-up would give 0.20"
        );
        assert!(
            due(&ledger(Some(("2026-11-26", "0.19")), "0.10", None)),
            "0.09 left: under half of 0.20"
        );
        assert!(
            due(&ledger(Some(("2026-11-26", "0.25")), "0.10", Some("0.01"))),
            "a refused call is served at once"
        );
        assert!(
            !due(&ledger(Some(("2026-11-26", "0.25")), "0.30", None)),
            "spent past its grant, and the top-up would give no headroom"
        );
    }

    #[test]
    fn retired_spend_counts_against_the_budget() {
        let (grants, exhausted) = share(d("1.00"), d("1.00"), &[holder("0", None, "0")]);
        assert_eq!(grants, vec![Decimal::ZERO]);
        assert!(exhausted);
    }
}
