//! Kubernetes-convention conditions, kept by one helper so `lastTransitionTime` only moves when
//! the status does.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition to publish: type, whether it holds, a PascalCase reason and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Whether condition `type_` held in `conditions` (`None` when absent): to detect transitions.
pub fn holds(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// What to announce when `wanted` changes the status of its condition in `previous` (whether it
/// now holds, its reason, its message); `None` when the status stays as it was.
pub fn transition(previous: &[Condition], wanted: &Wanted) -> Option<(bool, &'static str, String)> {
    (holds(previous, wanted.type_) != Some(wanted.status))
        .then(|| (wanted.status, wanted.reason, wanted.message.clone()))
}

/// `wanted` as a condition, keeping the previous `lastTransitionTime` when the status is unchanged.
pub fn set(previous: &[Condition], wanted: Wanted, generation: Option<i64>) -> Condition {
    let status = if wanted.status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == wanted.type_ && c.status == status)
        .map_or_else(
            || Time(Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    Condition {
        type_: wanted.type_.to_owned(),
        status,
        reason: wanted.reason.to_owned(),
        message: wanted.message,
        last_transition_time,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let wanted = |status| Wanted {
            type_: "Valid",
            status,
            reason: "R",
            message: "m".into(),
        };
        let first = set(&[], wanted(true), Some(1));
        let same = set(std::slice::from_ref(&first), wanted(true), Some(2));
        assert_eq!(same.last_transition_time, first.last_transition_time);
        assert_eq!(same.observed_generation, Some(2));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let flipped = set(std::slice::from_ref(&first), wanted(false), Some(2));
        assert_ne!(flipped.last_transition_time, first.last_transition_time);
        assert_eq!(flipped.status, "False");
    }
}
